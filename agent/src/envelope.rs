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
//! ```

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
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(default)]
    pub equipment: BTreeMap<String, EquipmentEnvelope>,
    /// Where it was read from, for messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("cannot read the safety envelope {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the safety envelope {0} is invalid: {1} — fix it; the agent does not start with a broken envelope")]
    Invalid(PathBuf, String),
}

impl Envelope {
    /// Loads the envelope; a missing file is an empty envelope (the controller's limits apply).
    pub fn load(path: &Path) -> Result<Self, EnvelopeError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(EnvelopeError::Io(path.to_owned(), e)),
        };
        let mut env: Envelope =
            serde_yaml::from_str(&text).map_err(|e| EnvelopeError::Invalid(path.to_owned(), e.to_string()))?;
        for (eq, e) in &env.equipment {
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
        Ok(env)
    }

    fn source(&self) -> String {
        self.source.as_ref().map_or_else(|| "the safety envelope".into(), |p| p.display().to_string())
    }

    /// `Err(reason)` when writing `x` to `property` of `equipment` leaves the envelope.
    pub fn check(&self, equipment: &str, property: &str, x: f64) -> Result<(), String> {
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
        assert!(Envelope::load(&dir.path().join("missing.yaml")).expect("empty").equipment.is_empty());
    }
}
