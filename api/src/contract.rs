//! What the controller keeps that others read: the names of its Secrets, the keys of a
//! bootstrap token, and the layout of a standalone controller's state directory. Defined once
//! here, used by the controller that writes them and the kubectl plugin that reads them.

use std::path::{Path, PathBuf};

/// The Secret holding the plant CA (`ca.crt`, `ca.key`), in the controller's namespace.
pub const CA_SECRET: &str = "shopfloor-ca";

/// The Secret holding the bootstrap token of EdgeAgent `namespace/agent`, in the controller's
/// namespace.
pub fn token_secret_name(namespace: &str, agent: &str) -> String {
    format!("shopfloor-bootstrap-{namespace}-{agent}")
}

/// Keys of a bootstrap token Secret. The token an operator types is `<id>.<secret>`.
pub mod token_keys {
    pub const ID: &str = "token-id";
    pub const SECRET: &str = "token-secret";
    /// RFC 3339.
    pub const EXPIRES_AT: &str = "expires-at";
    /// RFC 3339; present once redeemed.
    pub const USED_AT: &str = "used-at";
    /// SHA-256 (hex) of the public key that redeemed the token: a retry with that key (its
    /// answer was lost) is answered again.
    pub const USED_BY: &str = "used-by";
}

/// A standalone controller's state directory.
pub mod state_dir {
    use super::{Path, PathBuf};

    /// `host:port` agents dial, written at start.
    pub const ENDPOINT: &str = "endpoint";

    /// Store metadata and the last status of one object.
    pub fn object(root: &Path, plural: &str, namespace: &str, name: &str) -> PathBuf {
        root.join("objects").join(plural).join(namespace).join(format!("{name}.yaml"))
    }

    /// One secret's file (mode 0600).
    pub fn secret(root: &Path, name: &str) -> PathBuf {
        secrets(root).join(format!("{name}.yaml"))
    }

    pub fn secrets(root: &Path) -> PathBuf {
        root.join("secrets")
    }

    pub fn objects(root: &Path) -> PathBuf {
        root.join("objects")
    }
}
