//! What agents report back, kept in memory until it lands in a status: configuration results
//! per revision, the last value read of every property, and the state of every fail-safe.

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
};

use jiff::Timestamp;
use shopfloor_api::{Value, equipment::ApplyResult};

use crate::store::ObjectKey;

/// The result of applying one desired setpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyResult {
    pub property: String,
    pub desired: Value,
    pub result: ApplyResult,
    pub message: Option<String>,
    pub read_back: Option<Value>,
}

/// An agent's ConfigApplied, as the controller keeps it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AppliedReport {
    pub revision: String,
    pub at: Option<Timestamp>,
    /// Per equipment name.
    pub equipment: BTreeMap<String, Vec<PropertyResult>>,
    /// Per slice name: `Ok(())` or the error.
    pub slices: BTreeMap<String, Result<(), String>>,
}

/// One reported value.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub value: Value,
    pub at: Timestamp,
}

/// One equipment's fail-safe as its agent last reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct FailSafeReport {
    pub engaged: bool,
    pub after: std::time::Duration,
    pub automatic: bool,
    pub required_by_envelope: bool,
    pub message: String,
    /// Engaged, its safe values not all read back from the device yet.
    pub unconfirmed: bool,
}

/// Reports from every agent.
#[derive(Debug, Default)]
pub struct Observed {
    applied: RwLock<HashMap<ObjectKey, AppliedReport>>,
    /// Per equipment, per property.
    readings: RwLock<HashMap<ObjectKey, BTreeMap<String, Reading>>>,
    /// Per agent, per equipment name: every report carries all of them.
    fail_safes: RwLock<HashMap<ObjectKey, BTreeMap<String, FailSafeReport>>>,
}

impl Observed {
    pub fn record_applied(&self, agent: ObjectKey, report: AppliedReport) {
        self.applied.write().unwrap_or_else(|p| p.into_inner()).insert(agent, report);
    }

    pub fn applied(&self, agent: &ObjectKey) -> Option<AppliedReport> {
        self.applied.read().unwrap_or_else(|p| p.into_inner()).get(agent).cloned()
    }

    /// `f` over every agent's last report, copying none: a slice's status counts the reports of
    /// every agent it selects, and cloning them was most of a 10,000-agent controller's main
    /// thread while sessions came and went.
    pub fn with_applied<T>(&self, f: impl FnOnce(&HashMap<ObjectKey, AppliedReport>) -> T) -> T {
        f(&self.applied.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records readings, keeping for each property the newest by timestamp (buffered telemetry
    /// delivered after a partition arrives late and out of order).
    pub fn record_readings(&self, equipment: ObjectKey, values: impl IntoIterator<Item = (String, Reading)>) {
        let mut all = self.readings.write().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(equipment).or_default();
        for (property, reading) in values {
            match entry.get(&property) {
                Some(existing) if existing.at >= reading.at => {}
                _ => {
                    entry.insert(property, reading);
                }
            }
        }
    }

    pub fn readings(&self, equipment: &ObjectKey) -> BTreeMap<String, Reading> {
        self.readings.read().unwrap_or_else(|p| p.into_inner()).get(equipment).cloned().unwrap_or_default()
    }

    /// Replaces what `agent` said of its fail-safes (each report carries all of them).
    pub fn record_fail_safes(&self, agent: &ObjectKey, states: BTreeMap<String, FailSafeReport>) {
        let mut all = self.fail_safes.write().unwrap_or_else(|p| p.into_inner());
        if states.is_empty() {
            all.remove(agent);
        } else {
            all.insert(agent.clone(), states);
        }
    }

    pub fn fail_safe(&self, agent: &ObjectKey, equipment: &str) -> Option<FailSafeReport> {
        self.fail_safes.read().unwrap_or_else(|p| p.into_inner()).get(agent)?.get(equipment).cloned()
    }

    pub fn forget_agent(&self, agent: &ObjectKey) {
        self.applied.write().unwrap_or_else(|p| p.into_inner()).remove(agent);
        self.fail_safes.write().unwrap_or_else(|p| p.into_inner()).remove(agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_buffered_readings_never_overwrite_newer_ones() {
        let o = Observed::default();
        let eq = ObjectKey::new("plant-a", "oven");
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("valid");
        o.record_readings(eq.clone(), [("pv".to_owned(), Reading { value: Value::Float(180.0), at: at(10) })]);
        o.record_readings(eq.clone(), [("pv".to_owned(), Reading { value: Value::Float(170.0), at: at(5) })]);
        assert_eq!(o.readings(&eq)["pv"].value, Value::Float(180.0));
    }
}
