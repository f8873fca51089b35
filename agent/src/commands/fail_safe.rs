//! The executor's part in the dead-man fail-safe: the built-in `resume-fail-safe`, and the
//! fail-safe's own writes. When to engage is decided in [`crate::fail_safe`].

use shopfloor_wire::{
    proto::{Command, CommandResult, NamedValue, ResultCode},
    value,
};

use super::{Arrival, Executor, Refusal, check_limits, refuse};
use crate::{envelope::Envelope, equipment::registry::Equipment};

/// The built-in action that lifts an engaged fail-safe.
pub const ACTION_RESUME_FAIL_SAFE: &str = "resume-fail-safe";

/// The refusal of a write while `equipment`'s fail-safe is engaged.
pub(super) fn engaged_message(equipment: &str, what: &str) -> String {
    format!(
        "the fail-safe of {equipment} is engaged ({what}); commands that write are refused until it is lifted: \
         check the equipment, then run its resume-fail-safe action"
    )
}

impl Executor {
    /// `resume-fail-safe`: lifts the equipment's engaged fail-safe; the link then applies the
    /// desired setpoints again. Resuming what is not engaged does nothing and succeeds.
    pub(super) fn resume(
        &self,
        eq: &Equipment,
        cmd: &Command,
        arrival: Arrival,
        result: &mut CommandResult,
    ) -> Result<(), Refusal> {
        if let Some(key) = cmd.parameters.first() {
            return refuse(
                ResultCode::InvalidParameter,
                format!("spec.parameters.{}: {ACTION_RESUME_FAIL_SAFE} takes no parameters", key.name),
            );
        }
        let name = &eq.config.name;
        result.started_unix_micros = arrival.offset.to_controller(self.wall.now_micros());
        let engaged = self.fail_safes.holding(name);
        if cmd.dry_run {
            result.code = ResultCode::DryRunOk as i32;
            result.message = match engaged {
                Some(_) => format!("valid; would lift the fail-safe of {name} and apply its desired setpoints again"),
                None => format!("valid; the fail-safe of {name} is not engaged, nothing to do"),
            };
            return Ok(());
        }
        result.code = ResultCode::Ok as i32;
        result.message = match self.fail_safes.resume(name) {
            Some(e) => {
                format!("lifted the fail-safe of {name} ({}); its desired setpoints are applied again", e.message)
            }
            None => format!("the fail-safe of {name} is not engaged; nothing to do"),
        };
        Ok(())
    }

    /// Writes `equipment`'s safe values, in order, under its lock (after any command under way,
    /// which stops before its next write once the fail-safe is recorded as engaged), through the
    /// property's interlock limits and the plant's envelope, journalled as `id`, each read back.
    /// Every value is tried even when one fails; `Ok` only when every one reads back. A broken envelope file does not block these writes: they are
    /// the safe action the configuration and the plant asked for.
    pub async fn write_safe_values(&self, equipment: &str, values: &[NamedValue], id: &str) -> CommandResult {
        let mut result = CommandResult { id: id.to_owned(), ..Default::default() };
        result.received_unix_micros = self.wall.now_micros();
        let Some(eq) = self.equipment.get(equipment) else {
            result.code = ResultCode::UnknownEquipment as i32;
            result.message = format!("{equipment} is not installed; nothing written");
            return result;
        };
        let _turn = eq.lock.lock().await;
        result.started_unix_micros = self.wall.now_micros();
        if let Err(e) = self.journal.lock().await.start(id) {
            tracing::error!(equipment, "cannot journal the fail-safe's writes ({e}); writing them anyway");
        }
        let envelope = if self.envelope.refusal().is_some() { &Envelope::none() } else { &self.envelope };
        let mut wrote = Vec::new();
        let mut refused = Vec::new();
        for nv in values {
            let name = &nv.name;
            let v = nv.value.unwrap_or_default();
            let checked = match eq.property(name) {
                None => Err(format!("{equipment} has no property {name}")),
                Some(p) if !p.writable => Err(format!("{equipment}.{name} is read-only")),
                Some(p) => value::coerce(&v, p.r#type())
                    .ok_or_else(|| format!("{} does not fit {:?}", value::display(&v), p.r#type()))
                    .and_then(|v| {
                        check_limits(envelope, equipment, p, &v, "failSafe.values").map(|()| (p, v)).map_err(|(_, m)| m)
                    }),
            };
            // Read back: a safe state is claimed only once the device shows it.
            let outcome = match checked {
                Ok((p, v)) => match eq.driver.write(p, &v).await {
                    Err(e) => Err(format!("writing {name}: {e}")),
                    Ok(()) => match eq.driver.read(p).await {
                        Ok(back) if value::same(&back, &v, crate::apply::tolerance(p)) => Ok(v),
                        Ok(back) => Err(format!("wrote {}, read back {}", value::display(&v), value::display(&back))),
                        Err(e) => Err(format!("wrote {}, cannot read it back: {e}", value::display(&v))),
                    },
                },
                Err(m) => Err(m),
            };
            match outcome {
                Ok(v) => {
                    wrote.push(format!("{name}={}", value::display(&v)));
                    result.outputs.push(NamedValue { name: name.clone(), value: Some(v) });
                }
                Err(m) => refused.push(format!("{name} not written: {m}")),
            }
        }
        result.code = if refused.is_empty() { ResultCode::Ok } else { ResultCode::DeviceError } as i32;
        result.message = match (wrote.is_empty(), refused.is_empty()) {
            (false, true) => format!("wrote {}", wrote.join(", ")),
            (true, _) => format!("wrote nothing: {}", refused.join("; ")),
            (false, false) => format!("wrote {}; {}", wrote.join(", "), refused.join("; ")),
        };
        result.finished_unix_micros = self.wall.now_micros();
        self.record(id, &result).await;
        result
    }
}
