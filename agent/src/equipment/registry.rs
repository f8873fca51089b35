//! Which equipment is installed and with which driver. Installing a configuration keeps the
//! driver (and its open connection) of equipment whose protocol block and slice marking did not
//! change; everything else is rebuilt.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use shopfloor_wire::proto::{EquipmentConfig, PropertyConfig};
use tokio::sync::Mutex;

use super::drivers::{self, Driver};
use crate::slices::{Marking, Noop, SliceBackend};

/// A piece of equipment as the agent drives it.
pub struct Equipment {
    pub config: EquipmentConfig,
    pub driver: Arc<dyn Driver>,
    /// The marking of its slice, when the slice is steered on this host.
    pub marking: Option<Marking>,
    /// Serialises commands (and setpoint writes) to this equipment; tokio's mutex is FIFO.
    pub lock: Mutex<()>,
}

impl std::fmt::Debug for Equipment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Equipment").field("name", &self.config.name).finish_non_exhaustive()
    }
}

impl Equipment {
    pub fn property(&self, name: &str) -> Option<&PropertyConfig> {
        self.config.properties.iter().find(|p| p.name == name)
    }
}

/// The installed equipment, and the slice backend that steers its traffic.
pub struct EquipmentRegistry {
    equipment: RwLock<HashMap<String, Arc<Equipment>>>,
    slices: Arc<dyn SliceBackend>,
    opcua: Arc<drivers::opcua::Site>,
    /// Counts installs, so that the telemetry loop sleeps until a reading is due or the
    /// equipment changes instead of looking every few milliseconds.
    installs: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for EquipmentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EquipmentRegistry").finish_non_exhaustive()
    }
}

impl Default for EquipmentRegistry {
    /// Nothing installed, slices not steered (the `noop` backend).
    fn default() -> Self {
        Self::new(Arc::new(Noop))
    }
}

impl EquipmentRegistry {
    pub fn new(slices: Arc<dyn SliceBackend>) -> Self {
        Self {
            equipment: RwLock::default(),
            slices,
            opcua: Arc::default(),
            installs: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The host's OPC UA trust and users, for equipment that speaks OPC UA.
    #[must_use]
    pub fn with_opcua(mut self, site: drivers::opcua::Site) -> Self {
        self.opcua = Arc::new(site);
        self
    }

    pub fn slice_backend(&self) -> &dyn SliceBackend {
        self.slices.as_ref()
    }

    /// The slice backend, shared.
    pub fn slices(&self) -> Arc<dyn SliceBackend> {
        self.slices.clone()
    }

    /// Installs the equipment of a configuration, keeping the driver (and its connection) of
    /// equipment whose protocol block and slice marking did not change. `markings` holds the
    /// marking of each steered slice by name.
    pub fn install(
        &self,
        configs: &[EquipmentConfig],
        markings: &HashMap<String, Marking>,
    ) -> Vec<(String, Result<(), String>)> {
        let mut map = self.equipment.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        let mut results = Vec::new();
        for cfg in configs {
            let marking = markings.get(&cfg.slice).copied();
            let driver = match map.get(&cfg.name) {
                Some(old) if old.config.protocol == cfg.protocol && old.marking == marking => Ok(old.driver.clone()),
                _ => drivers::for_equipment(cfg, marking, &self.opcua),
            };
            match driver {
                Ok(driver) => {
                    next.insert(
                        cfg.name.clone(),
                        Arc::new(Equipment { config: cfg.clone(), driver, marking, lock: Mutex::new(()) }),
                    );
                    results.push((cfg.name.clone(), Ok(())));
                }
                Err(e) => results.push((cfg.name.clone(), Err(e.to_string()))),
            }
        }
        *map = next;
        drop(map);
        self.installs.send_modify(|n| *n += 1);
        results
    }

    /// Changes whenever a configuration is installed.
    pub fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installs.subscribe()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Equipment>> {
        self.equipment.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Equipment>> {
        self.equipment.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}
