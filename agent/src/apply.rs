//! Applying a configuration: for each equipment, write each desired setpoint that is not
//! already there, read it back, and report per property. Idempotent: a second apply of the same
//! configuration writes nothing. A failing device does not stop the others. An equipment whose
//! fail-safe is engaged is installed but its setpoints are held back (reported `Pending`) until
//! the fail-safe is lifted.

use shopfloor_wire::{
    proto::{ApplyConfig, ApplyResult, ConfigApplied, EquipmentResult, PropertyResult, ValueType},
    time::now_micros,
};

use shopfloor_wire::value;

use crate::{envelope::Envelope, equipment::registry::EquipmentRegistry, fail_safe::FailSafes};

/// Read-back tolerance of a property: half the smallest step its register can hold.
pub(crate) fn tolerance(p: &shopfloor_wire::proto::PropertyConfig) -> f64 {
    match (&p.modbus, p.r#type()) {
        (_, ValueType::Bool) => 0.0,
        (Some(m), _) if m.scale != 0.0 => m.scale.abs() / 2.0 + 1e-9,
        _ => 1e-6,
    }
}

/// Applies `cfg`: steers its slices, installs its equipment in `equipment`, writes setpoints
/// within their limits and the plant's `envelope`, except where `fail_safes` holds them back.
pub async fn apply(
    equipment: &EquipmentRegistry,
    envelope: &Envelope,
    fail_safes: &FailSafes,
    cfg: &ApplyConfig,
) -> ConfigApplied {
    // Slices first: the equipment's connections are then made with their slice's marking.
    let slice_results = equipment.slice_backend().apply(&cfg.slices, &cfg.equipment).await;
    let markings = if equipment.slice_backend().steers() {
        crate::slices::markings(&cfg.slices, &slice_results)
    } else {
        Default::default()
    };
    let installed = equipment.install(&cfg.equipment, &markings);
    // Each equipment on its own: a dead or slow device (an OPC UA server that never answers)
    // delays no other equipment's setpoints. The results keep the configuration's order.
    let results = futures::future::join_all(
        installed.into_iter().map(|(name, installed)| apply_one(equipment, envelope, fail_safes, cfg, name, installed)),
    )
    .await;
    ConfigApplied {
        revision: cfg.revision.clone(),
        equipment: results,
        slices: slice_results,
        applied_at_unix_micros: now_micros(),
    }
}

/// Applies one equipment's desired setpoints, under its lock, each written only if it differs
/// and read back.
async fn apply_one(
    equipment: &EquipmentRegistry,
    envelope: &Envelope,
    fail_safes: &FailSafes,
    cfg: &ApplyConfig,
    name: String,
    installed: Result<(), String>,
) -> EquipmentResult {
    let mut er = EquipmentResult { equipment: name.clone(), properties: vec![] };
    let Some(eq) = equipment.get(&name) else {
        let msg = installed.err().unwrap_or_else(|| "not installed".into());
        for p in
            cfg.equipment.iter().filter(|e| e.name == name).flat_map(|e| &e.properties).filter(|p| p.desired.is_some())
        {
            er.properties.push(PropertyResult {
                property: p.name.clone(),
                desired: p.desired,
                result: ApplyResult::Failed as i32,
                message: msg.clone(),
                read_back: None,
            });
        }
        return er;
    };
    let _turn = eq.lock.lock().await;
    let held = fail_safes.holding(&name);
    for p in eq.config.properties.iter().filter(|p| p.desired.is_some()) {
        let desired = p.desired.unwrap_or_default();
        let mut pr = PropertyResult { property: p.name.clone(), desired: Some(desired), ..Default::default() };
        if let Some(e) = &held {
            pr.result = ApplyResult::Pending as i32;
            pr.message =
                format!("held back: the fail-safe is engaged ({}); it applies once the fail-safe is lifted", e.message);
            er.properties.push(pr);
            continue;
        }
        let checked = value::coerce(&desired, p.r#type())
            .ok_or_else(|| format!("{} does not fit a {:?} property", value::display(&desired), p.r#type()))
            .and_then(|v| {
                // Limits and the envelope bound numbers; a boolean has none.
                let Some(x) = value::as_f64(&v) else { return Ok(v) };
                if p.min.is_some_and(|lo| x < lo) || p.max.is_some_and(|hi| x > hi) {
                    return Err(format!("{x} is outside the interlock limits"));
                }
                envelope.check(&name, &p.name, x).map(|()| v)
            });
        let v = match checked {
            Ok(v) => v,
            Err(message) => {
                pr.result = ApplyResult::Rejected as i32;
                pr.message = message;
                er.properties.push(pr);
                continue;
            }
        };
        let current = eq.driver.read(p).await;
        let needs_write = !matches!(&current, Ok(c) if value::same(c, &v, tolerance(p)));
        if needs_write && let Err(e) = eq.driver.write(p, &v).await {
            pr.result = ApplyResult::Failed as i32;
            pr.message = e.to_string();
            er.properties.push(pr);
            continue;
        }
        match eq.driver.read(p).await {
            Ok(back) if value::same(&back, &v, tolerance(p)) => {
                pr.result = ApplyResult::Applied as i32;
                pr.read_back = Some(back);
            }
            Ok(back) => {
                pr.result = ApplyResult::Failed as i32;
                pr.message = format!("wrote {}, read back {}", value::display(&v), value::display(&back));
                pr.read_back = Some(back);
            }
            Err(e) => {
                pr.result = ApplyResult::Failed as i32;
                pr.message = format!("read-back failed: {e}");
            }
        }
        er.properties.push(pr);
    }
    er
}

/// Whether any property failed (and a retry may help).
pub fn has_failures(applied: &ConfigApplied) -> bool {
    applied.equipment.iter().flat_map(|e| &e.properties).any(|p| p.result == ApplyResult::Failed as i32)
}

/// Whether applying again may get further: a property failed, or a steering backend could not
/// set up a slice (its interface may appear, a foreign qdisc may be removed).
pub fn needs_retry(equipment: &EquipmentRegistry, applied: &ConfigApplied) -> bool {
    has_failures(applied) || (equipment.slice_backend().steers() && applied.slices.iter().any(|s| !s.ok))
}
