//! The local safety envelope: a file owned by the plant (e.g. `/etc/shopfloor/envelope.yaml`)
//! that narrows the limits the controller sends. It can only narrow: the effective range of a
//! property is the intersection of the controller's `min`/`max` and the envelope's.
//!
//! ```yaml
//! equipment:
//!   infeed-conveyor:
//!     properties:
//!       belt-speed: {min: 0.0, max: 2.0}
//!     deniedActions: [start]
//!     # Required whatever the controller's configuration says; it can only make the
//!     # configuration's fail-safe stricter (see `fail_safe`).
//!     failSafe:
//!       after: 5s
//!       values: [{property: running, value: false}]
//!       resume: Manual
//! ```
//!
//! An envelope the agent is configured with fails closed: if the file is missing, unreadable or
//! invalid, the agent still runs (it reports, and holds what the equipment does now) but refuses
//! every command that writes and every setpoint change, naming the file, until the file is back
//! and the agent restarted. Deleting the file never silently removes the envelope. The SHA-256
//! of the envelope in force goes to the controller, which shows it on the EdgeAgent.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EquipmentEnvelope {
    #[serde(default)]
    pub properties: BTreeMap<String, Limits>,
    #[serde(default)]
    pub denied_actions: Vec<String>,
    #[serde(default)]
    pub fail_safe: Option<FailSafeRequirement>,
}

/// A fail-safe the plant requires of one equipment, in the shape of the Equipment's
/// `spec.failSafe`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailSafeRequirement {
    /// A duration such as `5s`, `500ms` or `2m`, between 1 s and 1 h.
    pub after: String,
    pub values: Vec<SafeValue>,
    #[serde(default)]
    pub resume: Resume,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeValue {
    pub property: String,
    pub value: Scalar,
}

/// A property value as YAML writes it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Resume {
    #[default]
    Manual,
    Automatic,
}

impl FailSafeRequirement {
    fn after(&self) -> Result<std::time::Duration, String> {
        let d: jiff::SignedDuration =
            self.after.parse().map_err(|e| format!("after: `{}` is not a duration such as 5s: {e}", self.after))?;
        let d = std::time::Duration::try_from(d).map_err(|_| format!("after: `{}` is negative", self.after))?;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600)).contains(&d) {
            return Err(format!("after: `{}` must be between 1s and 1h", self.after));
        }
        Ok(d)
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(default)]
    pub equipment: BTreeMap<String, EquipmentEnvelope>,
    /// Where it was read from, for messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// SHA-256 of the file in force, hex.
    #[serde(skip)]
    pub sha256: Option<String>,
    /// Why every write is refused: the configured file could not be used.
    #[serde(skip)]
    pub refusing: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("cannot read the safety envelope {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the safety envelope {0} is invalid: {1} — fix it; the agent does not start with a broken envelope")]
    Invalid(PathBuf, String),
}

impl Envelope {
    /// No envelope: only the controller's limits apply (`--envelope none`).
    pub fn none() -> Self {
        Self::default()
    }

    /// The configured envelope, or one that refuses every write because the file cannot be used.
    pub fn load_or_refuse(path: &Path) -> Self {
        match Self::load(path) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(
                    "{e}; every command that writes and every setpoint change is refused until it is fixed"
                );
                Self {
                    source: Some(path.to_owned()),
                    refusing: Some(format!(
                        "{e}; the agent refuses writes until the plant's safety envelope is restored (then restart \
                         the agent)"
                    )),
                    ..Self::default()
                }
            }
        }
    }

    /// Loads the envelope at `path`; a missing file is an error (fail closed).
    pub fn load(path: &Path) -> Result<Self, EnvelopeError> {
        let text = std::fs::read_to_string(path).map_err(|e| EnvelopeError::Io(path.to_owned(), e))?;
        let mut env: Envelope =
            serde_yaml::from_str(&text).map_err(|e| EnvelopeError::Invalid(path.to_owned(), e.to_string()))?;
        for (eq, e) in &env.equipment {
            if let Some(f) = &e.fail_safe {
                let at = |m: String| EnvelopeError::Invalid(path.to_owned(), format!("equipment.{eq}.failSafe.{m}"));
                f.after().map_err(at)?;
                if f.values.is_empty() {
                    return Err(at("values: a fail-safe must write at least one property".into()));
                }
            }
            for (p, l) in &e.properties {
                if let (Some(lo), Some(hi)) = (l.min, l.max)
                    && lo > hi
                {
                    return Err(EnvelopeError::Invalid(
                        path.to_owned(),
                        format!("equipment.{eq}.properties.{p}: min {lo} > max {hi}"),
                    ));
                }
            }
        }
        env.source = Some(path.to_owned());
        env.sha256 = Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())));
        Ok(env)
    }

    /// Why every write is refused, if it is.
    pub fn refusal(&self) -> Option<&str> {
        self.refusing.as_deref()
    }

    fn source(&self) -> String {
        self.source.as_ref().map_or_else(|| "the safety envelope".into(), |p| p.display().to_string())
    }

    /// `Err(reason)` when writing `x` to `property` of `equipment` leaves the envelope.
    pub fn check(&self, equipment: &str, property: &str, x: f64) -> Result<(), String> {
        if let Some(why) = &self.refusing {
            return Err(why.clone());
        }
        let Some(l) = self.equipment.get(equipment).and_then(|e| e.properties.get(property)) else { return Ok(()) };
        if l.min.is_some_and(|lo| x < lo) || l.max.is_some_and(|hi| x > hi) {
            return Err(format!(
                "{x} is outside the plant's safety envelope for {equipment}.{property} [{}, {}] set in {}",
                l.min.map_or("-inf".into(), |v| v.to_string()),
                l.max.map_or("+inf".into(), |v| v.to_string()),
                self.source()
            ));
        }
        Ok(())
    }

    /// The fail-safe the plant requires of `equipment`, if any.
    pub fn fail_safe(&self, equipment: &str) -> Option<crate::fail_safe::Requirement> {
        use shopfloor_wire::proto::{NamedValue, Value, value::Kind};
        let f = self.equipment.get(equipment)?.fail_safe.as_ref()?;
        let kind = |s: Scalar| match s {
            Scalar::Bool(b) => Kind::BoolValue(b),
            Scalar::Int(i) => Kind::IntValue(i),
            Scalar::Float(x) => Kind::FloatValue(x),
        };
        Some(crate::fail_safe::Requirement {
            // Checked at load.
            after: f.after().unwrap_or(std::time::Duration::from_secs(1)),
            values: f
                .values
                .iter()
                .map(|v| NamedValue { name: v.property.clone(), value: Some(Value { kind: Some(kind(v.value)) }) })
                .collect(),
            automatic: f.resume == Resume::Automatic,
        })
    }

    pub fn action_denied(&self, equipment: &str, action: &str) -> Option<String> {
        self.equipment.get(equipment).filter(|e| e.denied_actions.iter().any(|a| a == action)).map(|_| {
            format!("action {action} of {equipment} is denied by the plant's safety envelope in {}", self.source())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_narrows_and_names_its_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("envelope.yaml");
        std::fs::write(
            &path,
            "equipment:\n  conveyor:\n    properties:\n      speed: {max: 2.0}\n    deniedActions: [reverse]\n",
        )
        .expect("write");
        let env = Envelope::load(&path).expect("load");
        assert!(env.check("conveyor", "speed", 1.9).is_ok());
        let err = env.check("conveyor", "speed", 2.1).expect_err("outside");
        assert!(err.contains("envelope.yaml") && err.contains("conveyor.speed"), "{err}");
        assert!(env.action_denied("conveyor", "reverse").is_some());
        assert!(env.check("press", "speed", 99.0).is_ok(), "no entry, no narrowing");
        std::fs::write(&path, "equipment: {x: {properties: {p: {min: 5, max: 1}}}}").expect("write");
        assert!(matches!(Envelope::load(&path), Err(EnvelopeError::Invalid(..))));
    }

    /// The reported failure: deleting the envelope file silently removed the envelope.
    #[test]
    fn a_configured_envelope_that_is_missing_or_broken_refuses_every_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("envelope.yaml");
        std::fs::write(&path, "equipment: {}\n").expect("write");
        let ok = Envelope::load_or_refuse(&path);
        assert_eq!(ok.refusal(), None);
        assert_eq!(ok.sha256.as_deref().map(str::len), Some(64));
        for broken in ["missing", "invalid"] {
            if broken == "missing" {
                std::fs::remove_file(&path).expect("rm");
            } else {
                std::fs::write(&path, "equipment: [").expect("write");
            }
            let env = Envelope::load_or_refuse(&path);
            let why = env.refusal().expect("refusing");
            assert!(why.contains("envelope.yaml") && why.contains("refuses writes"), "{broken}: {why}");
            assert!(env.check("press", "speed", 1.0).is_err(), "{broken}: even where it set no limit");
            assert_eq!(env.sha256, None);
        }
        assert_eq!(Envelope::none().refusal(), None);
    }
}
