//! Host traffic steering for network slices, behind one trait. This build has the `noop`
//! backend: it logs exactly what a steering backend would set up on the host and changes nothing,
//! so slices are reported as not applied, with that reason. (The Linux netlink backend — routing
//! table, fwmark rule, DSCP marking, HTB/TBF at the MBR — is tracked in issue #4.)

use shopfloor_wire::proto::{EquipmentConfig, SliceConfig, SliceResult, equipment_config::Protocol};

/// Applies the slices of a configuration on the host.
pub trait SliceBackend: Send + Sync {
    fn apply(&self, slices: &[SliceConfig], equipment: &[EquipmentConfig]) -> Vec<SliceResult>;
}

/// The steps a backend would take for `slice`, in words.
pub fn plan(slice: &SliceConfig, equipment: &[EquipmentConfig]) -> Vec<String> {
    let mut steps = vec![
        format!("route table {}: default via dev {}", slice.routing_table, slice.interface),
        format!("rule: fwmark {:#x} → table {}", slice.fwmark, slice.routing_table),
    ];
    let hosts: Vec<String> = equipment
        .iter()
        .filter(|e| e.slice == slice.name)
        .filter_map(|e| match &e.protocol {
            Some(Protocol::ModbusTcp(m)) => Some(format!("{}:{}", m.host, m.port)),
            _ => None,
        })
        .collect();
    if !hosts.is_empty() {
        steps.push(format!("mark traffic to {} with fwmark {:#x}", hosts.join(", "), slice.fwmark));
        if let Some(dscp) = slice.dscp {
            steps.push(format!("set DSCP {dscp} on traffic to {}", hosts.join(", ")));
        }
    }
    if slice.mbr_uplink_bps > 0 {
        steps.push(format!("shape egress on {} to {} bit/s (MBR uplink)", slice.interface, slice.mbr_uplink_bps));
    }
    steps
}

/// Logs what it would do; changes nothing.
#[derive(Debug, Default)]
pub struct Noop;

impl SliceBackend for Noop {
    fn apply(&self, slices: &[SliceConfig], equipment: &[EquipmentConfig]) -> Vec<SliceResult> {
        slices
            .iter()
            .map(|s| {
                for step in plan(s, equipment) {
                    tracing::info!(slice = %s.name, sst = s.sst, "noop slice backend would set up: {step}");
                }
                SliceResult {
                    slice: s.name.clone(),
                    ok: false,
                    message: "the noop slice backend changes nothing on the host (its steps are in the agent log)"
                        .into(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_wire::proto::ModbusTcp;

    #[test]
    fn the_plan_names_route_rule_marking_and_shaping() {
        let slice = SliceConfig {
            name: "control".into(),
            interface: "uesimtun0".into(),
            routing_table: 100,
            fwmark: 100,
            dscp: Some(46),
            mbr_uplink_bps: 20_000_000,
            ..Default::default()
        };
        let eq = EquipmentConfig {
            name: "plc".into(),
            slice: "control".into(),
            protocol: Some(Protocol::ModbusTcp(ModbusTcp { host: "10.0.0.5".into(), port: 502, ..Default::default() })),
            ..Default::default()
        };
        let steps = plan(&slice, &[eq]);
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert!(steps[4].contains("20000000 bit/s"));
        let results = Noop.apply(&[slice], &[]);
        assert!(!results[0].ok, "noop never claims to have steered traffic");
    }
}
