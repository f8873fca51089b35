//! `NetworkSlice`: a 5G network slice and how a plant host steers traffic onto it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, LabelSelector};

/// A 5G network slice (3GPP TS 23.501 S-NSSAI, DNN and QoS) and how the agents it selects steer
/// their equipment traffic onto it on the plant host.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shopfloor.io",
    version = "v1alpha1",
    kind = "NetworkSlice",
    plural = "networkslices",
    namespaced,
    derive = "PartialEq",
    status = "NetworkSliceStatus",
    shortname = "ns5g",
    category = "shopfloor",
    printcolumn(name = "SST", type_ = "integer", json_path = ".spec.snssai.sst"),
    printcolumn(name = "SD", type_ = "string", json_path = ".spec.snssai.sd"),
    printcolumn(name = "DNN", type_ = "string", json_path = ".spec.dnn"),
    printcolumn(name = "5QI", type_ = "integer", json_path = ".spec.qos.fiveQi"),
    printcolumn(name = "Selected", type_ = "integer", json_path = ".status.selectedAgents"),
    printcolumn(name = "Applied", type_ = "integer", json_path = ".status.appliedAgents"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failedAgents"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSliceSpec {
    /// Single Network Slice Selection Assistance Information.
    pub snssai: Snssai,
    /// Data network name, e.g. `plant-control`.
    #[schemars(length(min = 1, max = 100), regex(pattern = "^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"))]
    pub dnn: String,
    pub qos: Qos,
    /// How the plant host steers the slice's traffic.
    pub steering: Steering,
    /// The EdgeAgents this slice applies to. An empty selector selects every agent in the
    /// namespace.
    #[serde(default)]
    pub agent_selector: LabelSelector,
}

/// S-NSSAI: slice/service type and optional slice differentiator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snssai {
    /// Slice/Service Type: 1 eMBB, 2 URLLC, 3 MIoT, 4 V2X, 5 HMTC; 128-255 operator specific.
    #[schemars(range(min = 1, max = 255))]
    pub sst: u8,
    /// Slice Differentiator, 6 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Fa-f0-9]{6}$"))]
    pub sd: Option<String>,
}

/// QoS profile of the slice's flows (TS 23.501 §5.7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.fiveQi in [1, 2, 3, 4, 65, 66, 67, 71, 72, 73, 74, 75, 76, 82, 83, 84, 85, 86, 87, 88, 89, 90]) || has(self.gbr)", "message": "this 5QI has a GBR resource type: set qos.gbr", "fieldPath": ".gbr"}
]))]
pub struct Qos {
    /// 5G QoS Identifier.
    #[schemars(range(min = 1, max = 255))]
    pub five_qi: u8,
    pub arp: Arp,
    /// Guaranteed bit rate; required for GBR and delay-critical GBR 5QIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbr: Option<BitrateLimits>,
    /// Maximum bit rate; the agent shapes the slice's egress to the uplink MBR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbr: Option<BitrateLimits>,
    /// Upper bound on packet delay between the UE and the UPF (Go duration, e.g. `10ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub packet_delay_budget: Option<Duration>,
    /// Packet error rate as scalar × 10^-exponent, written `1e-5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[1-9]e-[1-9]$"))]
    pub packet_error_rate: Option<String>,
}

/// Allocation and Retention Priority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arp {
    /// 1 is the highest priority, 15 the lowest.
    #[schemars(range(min = 1, max = 15))]
    pub priority_level: u8,
    #[serde(default)]
    pub preemption_capability: PreemptionCapability,
    #[serde(default)]
    pub preemption_vulnerability: PreemptionVulnerability,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PreemptionCapability {
    #[default]
    NotPreempt,
    MayPreempt,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PreemptionVulnerability {
    NotPreemptable,
    #[default]
    Preemptable,
}

/// A bit rate per direction, written as quantities such as `50Mbps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BitrateLimits {
    #[schemars(length(max = 32), regex(pattern = r"^[0-9]+(\.[0-9]+)?(bps|Kbps|Mbps|Gbps|Tbps)$"))]
    pub uplink: String,
    #[schemars(length(max = 32), regex(pattern = r"^[0-9]+(\.[0-9]+)?(bps|Kbps|Mbps|Gbps|Tbps)$"))]
    pub downlink: String,
}

/// Host-side steering: traffic of the slice's equipment is marked, routed through its own table
/// out of the slice interface, DSCP-marked and shaped to the MBR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Steering {
    /// Network interface attached to the slice's PDU session, e.g. `wwan0` or `uesimtun0`.
    #[schemars(length(min = 1, max = 15), regex(pattern = "^[A-Za-z0-9_.:-]+$"))]
    pub interface: String,
    /// Policy-routing table for the slice (1-252; 253-255 are reserved by the kernel).
    #[schemars(range(min = 1, max = 252))]
    pub routing_table: u32,
    /// Firewall mark selecting the slice's traffic.
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub fwmark: u32,
    /// DSCP code point set on the slice's packets (0-63), e.g. 46 (EF) for control traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 63))]
    pub dscp: Option<u8>,
}

/// Observed state of a NetworkSlice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSliceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// EdgeAgents the selector matches.
    #[serde(default)]
    pub selected_agents: i32,
    /// Selected agents that applied the slice's steering.
    #[serde(default)]
    pub applied_agents: i32,
    /// Selected agents that failed to apply it.
    #[serde(default)]
    pub failed_agents: i32,
}
