//! Bootstrap tokens, like kubeadm's: `<id>.<secret>`, single-use, expiring, bound to one
//! EdgeAgent, stored in a Secret named after the agent. The operator hands the token to the
//! plant host once (`kubectl shopfloor enroll <agent>` prints the whole command line); the
//! agent redeems it with a CSR over the enrollment path and receives its certificate.

use shopfloor_api::contract::token_keys;
use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::store::{ObjectKey, SecretData};

/// Default token lifetime: long enough to walk to the plant host, short enough to be useless
/// if it leaks later.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The Secret that holds `agent`'s bootstrap token.
pub fn token_secret_name(agent: &ObjectKey) -> String {
    shopfloor_api::contract::token_secret_name(&agent.namespace, &agent.name)
}

/// A bootstrap token and what it is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
    pub agent: ObjectKey,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    /// SHA-256 (hex) of the public key that redeemed it.
    pub used_by: Option<String>,
}

/// How a token check passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redemption {
    /// The token was not used: this redeems it.
    First,
    /// The host that redeemed it asks again with the same key (it never got the answer): it
    /// gets a certificate for that key again, and the token stays spent.
    Again,
}

/// Why a token is refused. The messages go back to the agent and into the controller's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bootstrap token is malformed: expected `<6 characters>.<16 characters>`")]
    Malformed,
    #[error("no bootstrap token with id {0} exists: get a fresh one with `kubectl shopfloor enroll <agent>`")]
    Unknown(String),
    #[error(
        "bootstrap token {0} was already used at {1}; tokens are single-use. To enroll a replacement host, delete and \
         re-create the EdgeAgent, then run `kubectl shopfloor enroll <agent>` for its new token"
    )]
    Reused(String, Timestamp),
    #[error(
        "bootstrap token {0} expired at {1}: the controller replaces it within seconds; run `kubectl shopfloor enroll \
         <agent>` again for the new enroll line"
    )]
    Expired(String, Timestamp),
    #[error("bootstrap token {id} belongs to EdgeAgent {bound}, not {asked}")]
    Foreign { id: String, bound: ObjectKey, asked: ObjectKey },
    #[error("the bootstrap token's secret does not match")]
    Mismatch,
    #[error("cannot draw random bytes for a token: {0}")]
    Random(String),
}

fn random_string(len: usize) -> Result<String, TokenError> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        // 36 symbols from a byte: skip the top of the range so every symbol is equally likely.
        for b in bytes.into_iter().filter(|b| *b < 252).take(len - out.len()) {
            out.push(char::from(ALPHABET[usize::from(b) % 36]));
        }
    }
    Ok(out)
}

impl BootstrapToken {
    /// A fresh token for `agent`, valid for `ttl` from `now`.
    pub fn generate(agent: ObjectKey, now: Timestamp, ttl: Duration) -> Result<Self, TokenError> {
        Ok(Self {
            id: random_string(6)?,
            secret: random_string(16)?,
            agent,
            expires_at: now.checked_add(ttl).unwrap_or(Timestamp::MAX),
            used_at: None,
            used_by: None,
        })
    }

    /// The token as the operator types it.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    pub fn to_secret(&self) -> SecretData {
        let mut d = BTreeMap::new();
        d.insert(token_keys::ID.to_owned(), self.id.clone().into_bytes());
        d.insert(token_keys::SECRET.to_owned(), self.secret.clone().into_bytes());
        d.insert("agent-namespace".to_owned(), self.agent.namespace.clone().into_bytes());
        d.insert("agent-name".to_owned(), self.agent.name.clone().into_bytes());
        d.insert(token_keys::EXPIRES_AT.to_owned(), self.expires_at.to_string().into_bytes());
        if let Some(used) = self.used_at {
            d.insert(token_keys::USED_AT.to_owned(), used.to_string().into_bytes());
        }
        if let Some(key) = &self.used_by {
            d.insert(token_keys::USED_BY.to_owned(), key.clone().into_bytes());
        }
        d
    }

    /// Reads a token back from its Secret; `None` if the Secret is not a token.
    pub fn from_secret(data: &SecretData) -> Option<Self> {
        let s = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
        Some(Self {
            id: s(token_keys::ID)?,
            secret: s(token_keys::SECRET)?,
            agent: ObjectKey::new(s("agent-namespace")?, s("agent-name")?),
            expires_at: s(token_keys::EXPIRES_AT)?.parse().ok()?,
            used_at: s(token_keys::USED_AT).and_then(|t| t.parse().ok()),
            used_by: s(token_keys::USED_BY),
        })
    }

    /// Checks `presented` for redemption by `agent`, with the key whose SHA-256 is `key`, at
    /// `now`. Comparison is over digests so it does not leak the secret through timing. A spent
    /// token passes again only for the key that spent it, before it expires: the CSR's signature
    /// proves that key's holder asks, so an enrollment whose answer was lost can be retried.
    pub fn check(
        &self,
        presented: &str,
        agent: &ObjectKey,
        now: Timestamp,
        key: &str,
    ) -> Result<Redemption, TokenError> {
        let (id, secret) = parse(presented)?;
        if id != self.id {
            return Err(TokenError::Unknown(id.to_owned()));
        }
        if Sha256::digest(secret.as_bytes()) != Sha256::digest(self.secret.as_bytes()) {
            return Err(TokenError::Mismatch);
        }
        if &self.agent != agent {
            return Err(TokenError::Foreign { id: self.id.clone(), bound: self.agent.clone(), asked: agent.clone() });
        }
        if now >= self.expires_at {
            return Err(TokenError::Expired(self.id.clone(), self.expires_at));
        }
        match self.used_at {
            Some(_) if self.used_by.as_deref() == Some(key) => Ok(Redemption::Again),
            Some(used) => Err(TokenError::Reused(self.id.clone(), used)),
            None => Ok(Redemption::First),
        }
    }
}

/// Splits `<id>.<secret>` and checks its shape.
pub fn parse(token: &str) -> Result<(&str, &str), TokenError> {
    let (id, secret) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
    if ok(id, 6) && ok(secret, 16) { Ok((id, secret)) } else { Err(TokenError::Malformed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn agent(n: &str) -> ObjectKey {
        ObjectKey::new("plant-a", n)
    }

    #[test]
    fn tokens_round_trip_through_their_secret_and_are_well_formed() {
        let tok = BootstrapToken::generate(agent("line-1"), t(0), TOKEN_TTL).expect("token");
        assert!(parse(&tok.token()).is_ok(), "{}", tok.token());
        assert_eq!(BootstrapToken::from_secret(&tok.to_secret()), Some(tok.clone()));
        let other = BootstrapToken::generate(agent("line-1"), t(0), TOKEN_TTL).expect("token");
        assert_ne!(tok.token(), other.token());
    }

    #[test]
    fn a_token_is_single_use_expiring_and_bound_to_one_agent() {
        let mut tok = BootstrapToken::generate(agent("line-1"), t(0), Duration::from_secs(60)).expect("token");
        let presented = tok.token();
        assert_eq!(tok.check(&presented, &agent("line-1"), t(10), "k1"), Ok(Redemption::First));
        assert!(matches!(tok.check(&presented, &agent("line-2"), t(10), "k1"), Err(TokenError::Foreign { .. })));
        assert!(matches!(tok.check(&presented, &agent("line-1"), t(60), "k1"), Err(TokenError::Expired(..))));
        let wrong = format!("{}.{}", tok.id, "a".repeat(16));
        assert_eq!(tok.check(&wrong, &agent("line-1"), t(10), "k1"), Err(TokenError::Mismatch));
        assert_eq!(tok.check("nonsense", &agent("line-1"), t(10), "k1"), Err(TokenError::Malformed));
        tok.used_at = Some(t(11));
        tok.used_by = Some("k1".into());
        let err = tok.check(&presented, &agent("line-1"), t(12), "k2").expect_err("reused");
        assert!(err.to_string().contains("single-use"), "{err}");
        // The key that spent it, whose answer was lost, may ask again until the token expires.
        assert_eq!(tok.check(&presented, &agent("line-1"), t(12), "k1"), Ok(Redemption::Again));
        assert!(matches!(tok.check(&presented, &agent("line-1"), t(60), "k1"), Err(TokenError::Expired(..))));
        assert!(matches!(tok.check(&wrong, &agent("line-1"), t(12), "k1"), Err(TokenError::Mismatch)));
        assert_eq!(BootstrapToken::from_secret(&tok.to_secret()), Some(tok.clone()), "used-by round-trips");
    }
}
