//! The state directory: the only module that touches it. Every write is atomic (write a
//! temporary file, fsync, rename, fsync the directory), so a crash at any point leaves the old
//! or the new file, never half of one. A corrupt file is reported by name and moved aside, never
//! silently ignored.
//!
//! Layout: `agent.key` (PKCS#8 PEM, 0600), `agent.crt` and `ca.crt` (PEM), `identity.yaml`
//! (namespace, name, controller address), `config.pb` (the last applied ApplyConfig, protobuf),
//! `journal.log` (see [`crate::journal`]).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt ({reason}); moved aside to {moved_to}")]
    Corrupt { path: PathBuf, reason: String, moved_to: PathBuf },
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StateError::Io { path: root.clone(), source })?;
        Ok(Self { root })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Atomically replaces `name` with `bytes`.
    pub fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let io = |source| StateError::Io { path: path.clone(), source };
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.root).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Replaces `name` atomically (a temporary file renamed over it) without syncing: for a
    /// record rewritten often whose loss in a crash of the host is harmless.
    pub fn write_unsynced(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let io = |source| StateError::Io { path: path.clone(), source };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Reads `name`; `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Moves a corrupt file aside and returns the error describing it.
    pub fn quarantine(&self, name: &str, reason: impl Into<String>) -> StateError {
        let path = self.path(name);
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let moved_to = self.path(&format!("{name}.corrupt-{secs}"));
        let reason = reason.into();
        if let Err(e) = std::fs::rename(&path, &moved_to) {
            tracing::error!(file = %path.display(), "cannot move corrupt file aside: {e}");
        }
        tracing::error!(file = %path.display(), moved_to = %moved_to.display(), "corrupt state file: {reason}");
        StateError::Corrupt { path, reason, moved_to }
    }

    /// Reads and parses `name`, quarantining it if it does not parse.
    pub fn read_parsed<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, StateError> {
        match self.read(name)? {
            None => Ok(None),
            Some(bytes) => match parse(&bytes) {
                Ok(v) => Ok(Some(v)),
                Err(reason) => Err(self.quarantine(name, reason)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_leftover_temporaries_are_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = StateDir::open(dir.path()).expect("open");
        s.write("config.pb", b"v1", 0o600).expect("write");
        // A crash between writing the temporary and the rename leaves the old file intact.
        std::fs::write(s.path(".config.pb.tmp"), b"half").expect("simulate crash");
        assert_eq!(s.read("config.pb").expect("read"), Some(b"v1".to_vec()));
        s.write("config.pb", b"v2", 0o600).expect("write");
        assert_eq!(s.read("config.pb").expect("read"), Some(b"v2".to_vec()));
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = StateDir::open(dir.path()).expect("open");
        s.write("identity.yaml", b"{{{", 0o600).expect("write");
        let err = s.read_parsed("identity.yaml", |b| {
            serde_yaml::from_slice::<serde_yaml::Value>(b).map_err(|e| e.to_string())
        });
        let Err(StateError::Corrupt { path, moved_to, .. }) = err else { panic!("corrupt expected") };
        assert!(path.ends_with("identity.yaml"));
        assert!(moved_to.exists() && !path.exists());
    }
}
