//! NetworkSlice rules: S-NSSAI, QoS, bit rates, steering.

use super::*;

/// 5QIs of GBR and delay-critical GBR resource type (TS 23.501 table 5.7.4-1).
pub const GBR_FIVE_QIS: [u8; 22] = [1, 2, 3, 4, 65, 66, 67, 71, 72, 73, 74, 75, 76, 82, 83, 84, 85, 86, 87, 88, 89, 90];

pub(super) fn network_slice_spec_rules(spec: &NetworkSliceSpec) -> Violations {
    let mut v = Violations::default();
    if spec.snssai.sst == 0 {
        v.push("spec.snssai.sst", "must be between 1 and 255 (1 eMBB, 2 URLLC, 3 MIoT, 4 V2X)");
    }
    if let Some(sd) = &spec.snssai.sd
        && !(sd.len() == 6 && sd.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        v.push(
            "spec.snssai.sd",
            format!("`{sd}` is not a slice differentiator: write exactly 6 hex digits, e.g. `00A001`"),
        );
    }
    let dnn_ok = !spec.dnn.is_empty()
        && spec.dnn.len() <= 100
        && spec.dnn.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && spec.dnn.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && spec.dnn.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !dnn_ok {
        v.push(
            "spec.dnn",
            format!(
                "`{}` is not a data network name: use letters, digits, '-' and '.', e.g. `plant-control`",
                spec.dnn
            ),
        );
    }
    let qos = &spec.qos;
    if qos.five_qi == 0 {
        v.push("spec.qos.fiveQi", "must be between 1 and 255");
    }
    if !(1..=15).contains(&qos.arp.priority_level) {
        v.push(
            "spec.qos.arp.priorityLevel",
            format!("is {}; it must be between 1 (highest) and 15 (lowest)", qos.arp.priority_level),
        );
    }
    if GBR_FIVE_QIS.contains(&qos.five_qi) && qos.gbr.is_none() {
        v.push("spec.qos.gbr", format!("5QI {} has a GBR resource type: set qos.gbr uplink and downlink", qos.five_qi));
    }
    let mut rates = [[None, None], [None, None]];
    for (k, (name, limits)) in [("gbr", &qos.gbr), ("mbr", &qos.mbr)].into_iter().enumerate() {
        if let Some(l) = limits {
            for (d, (dir, s)) in [("uplink", &l.uplink), ("downlink", &l.downlink)].into_iter().enumerate() {
                match s.parse::<Bitrate>() {
                    Ok(b) => rates[k][d] = Some(b),
                    Err(e) => v.push(format!("spec.qos.{name}.{dir}"), e.to_string()),
                }
            }
        }
    }
    // Only checkable here: the API server cannot compare quantity strings.
    for (d, dir) in ["uplink", "downlink"].into_iter().enumerate() {
        if let (Some(g), Some(m)) = (rates[0][d], rates[1][d])
            && g > m
        {
            v.push(format!("spec.qos.gbr.{dir}"), format!("GBR ({g}) must not exceed MBR ({m})"));
        }
    }
    if let Some(pdb) = &qos.packet_delay_budget {
        v.duration_between("spec.qos.packetDelayBudget", pdb, MS(1), Some(SECS(10)));
    }
    if let Some(per) = &qos.packet_error_rate {
        let b = per.as_bytes();
        let ok = b.len() == 4 && (b'1'..=b'9').contains(&b[0]) && &b[1..3] == b"e-" && (b'1'..=b'9').contains(&b[3]);
        if !ok {
            v.push(
                "spec.qos.packetErrorRate",
                format!("`{per}` is not a packet error rate: write scalar e-exponent with single digits, e.g. `1e-5`"),
            );
        }
    }
    let st = &spec.steering;
    let iface_ok = !st.interface.is_empty()
        && st.interface.len() <= 15
        && st.interface.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !iface_ok {
        v.push(
            "spec.steering.interface",
            format!("`{}` is not a Linux interface name (at most 15 characters)", st.interface),
        );
    }
    if !(1..=252).contains(&st.routing_table) {
        v.push(
            "spec.steering.routingTable",
            format!("is {}; use a table between 1 and 252 (253-255 are the kernel's)", st.routing_table),
        );
    }
    if st.fwmark == 0 {
        v.push("spec.steering.fwmark", "must be non-zero: mark 0 is unmarked traffic");
    }
    if let Some(dscp) = st.dscp
        && dscp > 63
    {
        v.push("spec.steering.dscp", format!("is {dscp}; DSCP is 0-63"));
    }
    v
}
