//! An in-memory store, for tests and benchmarks: records every write in order.

use std::sync::Mutex;

use super::{ObjectKey, SecretData, StatusUpdate, Store, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore {
    pub statuses: Mutex<Vec<StatusUpdate>>,
    pub deleted: Mutex<Vec<ObjectKey>>,
    pub secrets: Mutex<std::collections::BTreeMap<String, SecretData>>,
    pub events: Mutex<Vec<super::ObjectEvent>>,
}

impl MemoryStore {
    /// Every status written for `key`, oldest first.
    pub fn history(&self, key: &ObjectKey) -> Vec<StatusUpdate> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|u| u.key() == key).cloned().collect()
    }
}

impl Store for MemoryStore {
    async fn publish_event(&self, event: super::ObjectEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    async fn write_status(&self, update: StatusUpdate) -> Result<(), StoreError> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner()).push(update);
        Ok(())
    }

    async fn delete_command(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.deleted.lock().unwrap_or_else(|p| p.into_inner()).push(key.clone());
        Ok(())
    }

    async fn create_secret_if_absent(&self, name: &str, data: SecretData) -> Result<SecretData, StoreError> {
        Ok(self.secrets.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_insert(data).clone())
    }

    async fn read_secret(&self, name: &str) -> Result<Option<SecretData>, StoreError> {
        Ok(self.secrets.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned())
    }

    async fn replace_secret_if(&self, name: &str, expected: &SecretData, data: SecretData) -> Result<bool, StoreError> {
        let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if secrets.get(name) != Some(expected) {
            return Ok(false);
        }
        secrets.insert(name.to_owned(), data);
        Ok(true)
    }

    async fn write_secret(&self, name: &str, data: SecretData) -> Result<(), StoreError> {
        self.secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), data);
        Ok(())
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        self.secrets.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }
}
