//! Host traffic steering for network slices, behind one trait with two backends: `linux`
//! (rtnetlink: routing table, fwmark rule, TBF shaping at the MBR; see [`linux`]) and `noop`,
//! which logs what a steering backend would set up and changes nothing, so its slices are
//! reported as not applied, with that reason.

use std::{collections::HashMap, sync::Arc};

use futures::future::BoxFuture;
use shopfloor_wire::proto::{EquipmentConfig, SliceConfig, SliceResult, equipment_config::Protocol};

#[cfg(target_os = "linux")]
pub mod linux;

/// Applies the slices of a configuration on the host. Each apply is given the whole set the
/// host must hold: slices missing from it are removed.
pub trait SliceBackend: Send + Sync {
    fn apply<'a>(
        &'a self,
        slices: &'a [SliceConfig],
        equipment: &'a [EquipmentConfig],
    ) -> BoxFuture<'a, Vec<SliceResult>>;

    /// Whether connections to a steered slice's equipment must carry its [`Marking`].
    fn steers(&self) -> bool;
}

/// What the agent sets on its own sockets to a slice's equipment: the fwmark its rule routes
/// by, and the DSCP code point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marking {
    pub fwmark: u32,
    pub dscp: Option<u8>,
}

/// The marking of each slice applied successfully, by slice name.
pub fn markings(slices: &[SliceConfig], results: &[SliceResult]) -> HashMap<String, Marking> {
    slices
        .iter()
        .filter(|s| results.iter().any(|r| r.slice == s.name && r.ok))
        .map(|s| (s.name.clone(), Marking { fwmark: s.fwmark, dscp: s.dscp.and_then(|d| u8::try_from(d).ok()) }))
        .collect()
}

/// The backend named `name` (`linux` or `noop`), for the agent's `--slice-backend`.
pub fn backend(name: &str) -> Result<Arc<dyn SliceBackend>, String> {
    match name {
        #[cfg(target_os = "linux")]
        "linux" => Ok(Arc::new(linux::Netlink::default())),
        #[cfg(not(target_os = "linux"))]
        "linux" => Err("the linux slice backend needs Linux; use noop".into()),
        "noop" => Ok(Arc::new(Noop)),
        other => Err(format!("unknown slice backend {other:?}: use linux or noop")),
    }
}

/// The default backend: `linux` on Linux, `noop` elsewhere.
pub const DEFAULT_BACKEND: &str = if cfg!(target_os = "linux") { "linux" } else { "noop" };

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
    fn apply<'a>(
        &'a self,
        slices: &'a [SliceConfig],
        equipment: &'a [EquipmentConfig],
    ) -> BoxFuture<'a, Vec<SliceResult>> {
        let results = slices
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
            .collect();
        Box::pin(std::future::ready(results))
    }

    fn steers(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_wire::proto::ModbusTcp;

    #[tokio::test]
    async fn the_plan_names_route_rule_marking_and_shaping() {
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
        let results = Noop.apply(std::slice::from_ref(&slice), &[]).await;
        assert!(!results[0].ok, "noop never claims to have steered traffic");
        assert!(markings(&[slice], &results).is_empty(), "nothing is marked for a slice that is not steered");
    }
}
