//! The standalone store: manifests in a folder (the same YAML an operator would `kubectl apply`),
//! and everything the controller writes — status, store metadata, secrets — in a state directory.
//!
//! Layout of the state directory:
//! - `objects/<plural>/<namespace>/<name>.yaml`: uid, creation time, generation, spec hash and the
//!   last status of each object (what the API server would keep in `metadata` and `status`);
//! - `secrets/<name>.yaml`: CA, tokens and other secrets, mode 0600.
//!
//! Every write is atomic (a temporary file or the object's spare `.<name>.prev`, fsync, rename or
//! swap, fsync of the directory: `files`), so a crash leaves either the old or the new file. Objects without a namespace go to `default`, as
//! `kubectl apply` would put them.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Mutex,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use shopfloor_api::common::Time;
use shopfloor_api::{
    contract::state_dir,
    manifest::{self, Object},
};

use super::files::{replace_durably, swap_into_place, write_atomic, write_spare};
use crate::store::{ObjectKey, SecretData, StatusUpdate, Store, StoreError, World};

const DEFAULT_NAMESPACE: &str = "default";

/// An object's kind and name: what makes two definitions the same object.
type KindKey = (&'static str, ObjectKey);

/// What the store keeps per object besides the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectState {
    uid: String,
    creation_timestamp: Option<Time>,
    generation: i64,
    spec_sha256: String,
    /// Set when a finished command was deleted (its TTL elapsed) while its manifest remains.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    /// Written to the file by [`ObjectState::file`], from the typed status when there is one.
    #[serde(default, skip_serializing)]
    status: Option<StoredStatus>,
}

impl ObjectState {
    /// The state file's bytes, with `written` (the status being written, typed) or else the
    /// stored one as its status.
    fn file(&self, written: Option<&StatusUpdate>) -> Vec<u8> {
        let status = written.map(StatusOut::Written).or(self.status.as_ref().map(StatusOut::Stored));
        to_yaml(&StateFile { state: self, status })
    }
}

/// A state file: the stored state with its status.
#[derive(Serialize)]
struct StateFile<'a> {
    #[serde(flatten)]
    state: &'a ObjectState,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
}

/// A status as a state file shows it: serialized from the typed status being written (no text
/// parsed on the way), or from the stored text (a write that changes no status).
enum StatusOut<'a> {
    Written(&'a StatusUpdate),
    Stored(&'a StoredStatus),
}

impl Serialize for StatusOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        match self {
            StatusOut::Written(StatusUpdate::EdgeAgent(_, s)) => s.serialize(serializer),
            StatusOut::Written(StatusUpdate::Equipment(_, s)) => s.serialize(serializer),
            StatusOut::Written(StatusUpdate::NetworkSlice(_, s)) => s.serialize(serializer),
            StatusOut::Written(StatusUpdate::ControlCommand(_, s)) => s.serialize(serializer),
            StatusOut::Stored(text) => {
                text.parse::<serde_json::Value>().map_err(S::Error::custom)?.serialize(serializer)
            }
        }
    }
}

/// A status as compact JSON text. Kept for every object of the plant, a parsed
/// `serde_json::Value` cost several times its text (a B-tree node per JSON object: estimated at
/// about 6 KiB for a connected EdgeAgent's status, against about 1 KiB of text). Floats are
/// parsed back exactly (serde_json's `float_roundtrip`).
#[derive(Clone, Debug, PartialEq)]
struct StoredStatus(Box<str>);

impl StoredStatus {
    fn of(update: &StatusUpdate) -> Self {
        Self(serde_json::to_string(&StatusOut::Written(update)).expect("status always serializes").into())
    }

    fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StoredStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(serde_json::Value::deserialize(deserializer)?.to_string().into()))
    }
}

/// The world as last loaded, and where each object sits in it.
#[derive(Debug)]
struct Cached {
    world: World,
    at: HashMap<KindKey, usize>,
}

impl Cached {
    fn new(world: World) -> Self {
        let mut at = HashMap::new();
        let key = |m: &shopfloor_api::common::ObjectMeta| ObjectKey::of(m);
        at.extend(world.agents.iter().enumerate().map(|(i, o)| (("EdgeAgent", key(&o.metadata)), i)));
        at.extend(world.equipment.iter().enumerate().map(|(i, o)| (("Equipment", key(&o.metadata)), i)));
        at.extend(world.slices.iter().enumerate().map(|(i, o)| (("NetworkSlice", key(&o.metadata)), i)));
        at.extend(world.commands.iter().enumerate().map(|(i, o)| (("ControlCommand", key(&o.metadata)), i)));
        Self { world, at }
    }
}

/// Manifests in `manifests`, state in `state`.
#[derive(Debug)]
pub struct FolderStore {
    manifests: PathBuf,
    state: PathBuf,
    /// The state of every object seen, as last written: read from disk once, then kept here, so
    /// a pass over the plant costs no file system calls. Its lock also makes each object's
    /// read-modify-write of its file one at a time.
    states: Mutex<HashMap<KindKey, ObjectState>>,
    /// The world as of the last [`FolderStore::load`], with every status written since.
    world: Mutex<Option<Cached>>,
    /// The last definition read without fault of every object, with its file.
    last_good: Mutex<BTreeMap<KindKey, (PathBuf, Object)>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

fn plural(kind: &str) -> &'static str {
    match kind {
        "EdgeAgent" => "edgeagents",
        "Equipment" => "equipment",
        "NetworkSlice" => "networkslices",
        _ => "controlcommands",
    }
}

fn read_yaml<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_yaml::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { what: path.display().to_string(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { what: path.display().to_string(), source: e }),
    }
}

fn to_yaml<T: Serialize>(value: &T) -> Vec<u8> {
    serde_yaml::to_string(value).expect("store types always serialize").into_bytes()
}

fn spec_hash<T: Serialize>(spec: &T) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(spec).expect("specs always serialize")))
}

impl FolderStore {
    /// Opens the store, creating the state directory if needed.
    pub fn open(manifests: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let manifests = manifests.into();
        let state = state.into();
        if !manifests.is_dir() {
            return Err(StoreError::Io {
                what: format!("manifest folder {}", manifests.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        for sub in [state_dir::objects(&state), state_dir::secrets(&state)] {
            std::fs::create_dir_all(sub).map_err(io(format!("state directory {}", state.display())))?;
        }
        Ok(Self { manifests, state, states: Mutex::default(), world: Mutex::default(), last_good: Mutex::default() })
    }

    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    fn object_path(&self, kind: &str, key: &ObjectKey) -> PathBuf {
        state_dir::object(&self.state, plural(kind), &key.namespace, &key.name)
    }

    fn secret_path(&self, name: &str) -> PathBuf {
        state_dir::secret(&self.state, name)
    }

    /// Reads every manifest, validates it, and merges in the state the store keeps: the world
    /// as the controller must see it now. Never fails as a whole: unreadable or invalid
    /// documents are listed in [`World::refused`] and the rest of the plant carries on.
    ///
    /// No file can take an object away by mistake: an object defined in two places is refused,
    /// naming both files, and an object whose file stopped reading (bad YAML, an invalid edit)
    /// keeps its last good definition until the file is fixed — the agents keep their
    /// configuration meanwhile. Removing an object from a file that reads fine removes it.
    pub fn load(&self) -> World {
        let mut world = World::default();
        let files = match manifest::manifest_files(&self.manifests) {
            Ok(f) => f,
            Err(e) => {
                world.refused.push(e.to_string());
                return world;
            }
        };
        let mut broken: std::collections::BTreeSet<PathBuf> = Default::default();
        let mut defs: BTreeMap<KindKey, Vec<(manifest::Source, Object)>> = BTreeMap::new();
        for file in files {
            let loaded = match std::fs::read_to_string(&file) {
                Ok(text) => manifest::parse_valid(&file, &text),
                Err(error) => vec![Err(manifest::ManifestError::Io { path: file.clone(), error })],
            };
            for item in loaded {
                match item {
                    Ok((source, mut object)) => {
                        let meta = metadata_mut(&mut object);
                        meta.namespace.get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
                        let key = ObjectKey::of(meta);
                        defs.entry((object.kind(), key)).or_default().push((source, object));
                    }
                    Err(e) => {
                        broken.insert(e.file().to_owned());
                        world.refused.push(e.to_string());
                    }
                }
            }
        }
        let mut last_good = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        let mut in_force: Vec<(KindKey, Object)> = Vec::new();
        for ((kind, key), found) in &defs {
            if let [(source, object)] = &found[..] {
                last_good.insert((kind, key.clone()), (source.file.clone(), object.clone()));
                in_force.push(((kind, key.clone()), object.clone()));
                continue;
            }
            let places: Vec<String> = found.iter().map(|(s, _)| s.to_string()).collect();
            let kept = last_good.get(&(*kind, key.clone())).cloned();
            world.refused.push(format!(
                "{kind} {key} is defined more than once ({}): every definition is refused; keep one. {}",
                places.join(" and "),
                match &kept {
                    Some((file, _)) => format!("The last good definition, from {}, stays in force", file.display()),
                    None => "Until then the object is not in force".to_owned(),
                }
            ));
            if let Some((_, object)) = kept {
                in_force.push(((kind, key.clone()), object));
            }
        }
        // Objects missing now because their file stopped reading: keep the last good definition.
        last_good.retain(|(kind, key), (file, object)| {
            if defs.contains_key(&(*kind, key.clone())) {
                return true;
            }
            if broken.contains(file) {
                world.refused.push(format!(
                    "{}: {kind} {key} could not be read from it; its last good definition stays in force until the file is fixed",
                    file.display()
                ));
                in_force.push(((*kind, key.clone()), object.clone()));
                return true;
            }
            false
        });
        drop(last_good);
        let now = Timestamp::now();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for ((kind, key), mut object) in in_force {
            match self.merge_state(&mut states, &mut object, &key, now) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    world.refused.push(format!("{kind} {key}: {e}"));
                    continue;
                }
            }
            match object {
                Object::EdgeAgent(o) => world.agents.push(o),
                Object::Equipment(o) => world.equipment.push(o),
                Object::NetworkSlice(o) => world.slices.push(o),
                Object::ControlCommand(o) => world.commands.push(o),
            }
        }
        drop(states);
        *self.world.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached::new(world.clone()));
        world
    }

    /// The world as of the last [`FolderStore::load`] with the statuses written since, without
    /// reading a file (the first call loads).
    pub fn current(&self) -> World {
        if let Some(c) = self.world.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return c.world.clone();
        }
        self.load()
    }

    /// What a pass over `agents` needs, from memory: each one's EdgeAgent and Equipment with
    /// the statuses written since the folder was read, and every slice (a slice's status counts
    /// the agents it selects). A pass that built statuses on the ones read with the folder saw
    /// every condition as new, gave it the pass's time as its `lastTransitionTime`, and so
    /// rewrote each equipment's status at every report.
    pub fn objects_of<'a>(&self, agents: impl IntoIterator<Item = &'a ObjectKey>) -> World {
        let cached = self.world.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = cached.as_ref() else {
            drop(cached);
            return self.load();
        };
        let mut world = World { slices: c.world.slices.clone(), ..Default::default() };
        for key in agents {
            let (agent, equipment) = c.world.agent_objects(key);
            world.agents.extend(agent.cloned());
            world.equipment.extend(equipment.cloned());
        }
        world
    }

    /// Fills uid, creation time, generation and status from the state directory, recording new
    /// objects and bumping the generation when the spec changed. `false` for a deleted object.
    fn merge_state(
        &self,
        states: &mut HashMap<KindKey, ObjectState>,
        object: &mut Object,
        key: &ObjectKey,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let kind = object.kind();
        let hash = match &*object {
            Object::EdgeAgent(o) => spec_hash(&o.spec),
            Object::Equipment(o) => spec_hash(&o.spec),
            Object::NetworkSlice(o) => spec_hash(&o.spec),
            Object::ControlCommand(o) => spec_hash(&o.spec),
        };
        let path = self.object_path(kind, key);
        let cached = states.get(&(kind, key.clone())).cloned();
        let stored: Option<ObjectState> = match cached.map(|c| Ok(Some(c))).unwrap_or_else(|| read_yaml(&path)) {
            Ok(s) => s,
            Err(StoreError::Corrupt { what, message }) => {
                // Keep the evidence, start the object afresh, and say so.
                let aside = path.with_extension(format!("corrupt-{}", now.as_second()));
                let _ = std::fs::rename(&path, &aside);
                tracing::warn!(file = %what, moved_to = %aside.display(), "corrupt object state moved aside: {message}");
                None
            }
            Err(e) => return Err(e),
        };
        let mut state = match stored {
            Some(s) => s,
            None => ObjectState {
                uid: new_uid(kind, key, now),
                // Second precision, as the API server records it.
                creation_timestamp: Timestamp::from_second(now.as_second()).ok().map(Time),
                generation: 1,
                spec_sha256: hash.clone(),
                deleted: false,
                status: None,
            },
        };
        let mut dirty = !states.contains_key(&(kind, key.clone())) && !path.exists();
        if state.spec_sha256 != hash {
            state.generation += 1;
            state.spec_sha256 = hash;
            dirty = true;
        }
        if dirty {
            replace_durably(&path, &state.file(None), 0o644).map_err(io(path.display().to_string()))?;
        }
        states.insert((kind, key.clone()), state.clone());
        if state.deleted {
            return Ok(false);
        }
        let meta = metadata_mut(object);
        meta.uid = Some(state.uid.clone());
        meta.creation_timestamp = state.creation_timestamp.clone();
        meta.generation = Some(state.generation);
        if let Some(status) = &state.status {
            let what = || path.display().to_string();
            let corrupt = |e: serde_json::Error| StoreError::Corrupt { what: what(), message: e.to_string() };
            match object {
                Object::EdgeAgent(o) => o.status = Some(status.parse().map_err(corrupt)?),
                Object::Equipment(o) => o.status = Some(status.parse().map_err(corrupt)?),
                Object::NetworkSlice(o) => o.status = Some(status.parse().map_err(corrupt)?),
                Object::ControlCommand(o) => o.status = Some(status.parse().map_err(corrupt)?),
            }
        }
        Ok(true)
    }

    /// Changes an object's state with `f` and writes its file; `written` is the status being
    /// written, if any (the file is serialized from it).
    fn update_state(
        &self,
        kind: &'static str,
        key: &ObjectKey,
        written: Option<&StatusUpdate>,
        f: impl FnOnce(&mut ObjectState),
    ) -> Result<(), StoreError> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.object_path(kind, key);
        let mut state = match states.get(&(kind, key.clone())) {
            Some(s) => s.clone(),
            None => read_yaml(&path)?.ok_or_else(|| StoreError::Gone { kind, key: key.clone() })?,
        };
        f(&mut state);
        replace_durably(&path, &state.file(written), 0o644).map_err(io(path.display().to_string()))?;
        states.insert((kind, key.clone()), state);
        Ok(())
    }

    /// Lays a written status over the cached world.
    fn apply_to_world(&self, update: &StatusUpdate) {
        let mut cached = self.world.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = cached.as_mut() else { return };
        let Some(&i) = c.at.get(&(update.kind(), update.key().clone())) else { return };
        let w = &mut c.world;
        match update {
            StatusUpdate::EdgeAgent(_, s) => w.agents[i].status = Some(s.clone()),
            StatusUpdate::Equipment(_, s) => w.equipment[i].status = Some(s.clone()),
            StatusUpdate::NetworkSlice(_, s) => w.slices[i].status = Some(s.clone()),
            StatusUpdate::ControlCommand(_, s) => w.commands[i].status = Some(s.clone()),
        }
    }

    /// Watches the manifest folder; every change sends `()` (bursts are not coalesced here).
    pub fn watch(&self) -> Result<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>), StoreError> {
        use notify::Watcher;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| StoreError::Io {
            what: "watching the manifest folder".into(),
            source: std::io::Error::other(e),
        })?;
        watcher.watch(&self.manifests, notify::RecursiveMode::NonRecursive).map_err(|e| StoreError::Io {
            what: format!("watching {}", self.manifests.display()),
            source: std::io::Error::other(e),
        })?;
        Ok((watcher, rx))
    }
}

fn metadata_mut(object: &mut Object) -> &mut shopfloor_api::common::ObjectMeta {
    match object {
        Object::EdgeAgent(o) => &mut o.metadata,
        Object::Equipment(o) => &mut o.metadata,
        Object::NetworkSlice(o) => &mut o.metadata,
        Object::ControlCommand(o) => &mut o.metadata,
    }
}

/// A uid in the UUID layout, unique per object and first sighting.
fn new_uid(kind: &str, key: &ObjectKey, now: Timestamp) -> String {
    let h = Sha256::digest(format!("{kind}/{key}/{}/{}", now.as_nanosecond(), std::process::id()));
    let x = hex::encode(&h[..16]);
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

#[derive(Serialize, Deserialize)]
struct SecretFile {
    /// Values as UTF-8 where they are (PEM, tokens), base64 otherwise is not needed: every secret
    /// the controller writes is text.
    data: BTreeMap<String, String>,
}

fn secret_to_file(data: &SecretData) -> Result<Vec<u8>, StoreError> {
    let mut text = BTreeMap::new();
    for (k, v) in data {
        let s = String::from_utf8(v.clone())
            .map_err(|_| StoreError::Corrupt { what: format!("secret key {k}"), message: "not UTF-8 text".into() })?;
        text.insert(k.clone(), s);
    }
    Ok(to_yaml(&SecretFile { data: text }))
}

impl Store for FolderStore {
    /// Standalone mode has no event API: events go to the log, where `journalctl` finds them.
    async fn publish_event(&self, e: crate::store::ObjectEvent) {
        if e.warning {
            tracing::warn!(kind = e.kind, object = %e.key, reason = e.reason, "{}", e.note);
        } else {
            tracing::info!(kind = e.kind, object = %e.key, reason = e.reason, "{}", e.note);
        }
    }

    async fn write_status(&self, update: StatusUpdate) -> Result<(), StoreError> {
        let value = StoredStatus::of(&update);
        self.update_state(update.kind(), update.key(), Some(&update), |state| state.status = Some(value))?;
        self.apply_to_world(&update);
        Ok(())
    }

    /// Group commit: every status of the batch is written to its object's spare, one `syncfs(2)`
    /// makes them all durable, then each is swapped into place and each directory touched is
    /// synced once — a few syncs per batch instead of two per object (`files` says why spares).
    async fn write_statuses(&self, updates: Vec<StatusUpdate>) -> Vec<Result<(), StoreError>> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut staged: Vec<Result<(PathBuf, PathBuf, ObjectState), StoreError>> = Vec::with_capacity(updates.len());
        for update in &updates {
            let (kind, key) = (update.kind(), update.key());
            let path = self.object_path(kind, key);
            let state = match states.get(&(kind, key.clone())) {
                Some(s) => Ok(s.clone()),
                None => read_yaml::<ObjectState>(&path)
                    .and_then(|s| s.ok_or_else(|| StoreError::Gone { kind, key: key.clone() })),
            };
            staged.push(state.and_then(|mut state| {
                state.status = Some(StoredStatus::of(update));
                let spare =
                    write_spare(&path, &state.file(Some(update)), 0o644).map_err(io(path.display().to_string()))?;
                Ok((spare, path, state))
            }));
        }
        let synced =
            std::fs::File::open(&self.state).and_then(|dir| rustix::fs::syncfs(&dir).map_err(std::io::Error::from));
        let mut dirs = std::collections::BTreeSet::new();
        let mut results = Vec::with_capacity(updates.len());
        for (update, staged) in updates.iter().zip(staged) {
            let result = staged.and_then(|(spare, path, state)| {
                if let Err(e) = &synced {
                    // The spare is left as it is: it is never read, and the next write reuses it.
                    return Err(StoreError::Io {
                        what: format!("syncing {}", self.state.display()),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    });
                }
                swap_into_place(&spare, &path).map_err(io(path.display().to_string()))?;
                if let Some(d) = path.parent() {
                    dirs.insert(d.to_owned());
                }
                states.insert((update.kind(), update.key().clone()), state);
                Ok(())
            });
            results.push(result);
        }
        for d in dirs {
            if let Err(e) = std::fs::File::open(&d).and_then(|f| f.sync_all()) {
                tracing::warn!(dir = %d.display(), "cannot sync the directory after renaming statuses into it: {e}");
            }
        }
        drop(states);
        for (update, result) in updates.iter().zip(&results) {
            if result.is_ok() {
                self.apply_to_world(update);
            }
        }
        results
    }

    async fn delete_command(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.update_state("ControlCommand", key, None, |state| state.deleted = true)?;
        let mut cached = self.world.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_mut() {
            let mut world = std::mem::take(&mut c.world);
            world.commands.retain(|c| ObjectKey::of(&c.metadata) != *key);
            *c = Cached::new(world);
        }
        Ok(())
    }

    async fn create_secret_if_absent(&self, name: &str, data: SecretData) -> Result<SecretData, StoreError> {
        let path = self.secret_path(name);
        let bytes = secret_to_file(&data)?;
        let tmp = state_dir::secrets(&self.state).join(format!(".{name}.new-{}", std::process::id()));
        write_atomic(&tmp, &bytes, 0o600).map_err(io(tmp.display().to_string()))?;
        // link(2) fails if the target exists: an atomic create-if-absent, even against another
        // process starting at the same moment.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.read_secret(name).await?.ok_or_else(|| StoreError::Corrupt {
                    what: path.display().to_string(),
                    message: "vanished right after being found".into(),
                })
            }
            Err(e) => Err(StoreError::Io { what: path.display().to_string(), source: e }),
        }
    }

    async fn read_secret(&self, name: &str) -> Result<Option<SecretData>, StoreError> {
        let file: Option<SecretFile> = read_yaml(&self.secret_path(name))?;
        Ok(file.map(|f| f.data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()))
    }

    async fn replace_secret_if(&self, name: &str, expected: &SecretData, data: SecretData) -> Result<bool, StoreError> {
        // One claim per version of the secret, made with O_EXCL: of two writers replacing the
        // same version — in this process or another — exactly one creates the claim.
        let version = hex::encode(&Sha256::digest(secret_to_file(expected)?)[..16]);
        let claim = state_dir::secrets(&self.state).join(format!(".{name}.cas-{version}"));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&claim) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(StoreError::Io { what: claim.display().to_string(), source: e }),
        }
        if self.read_secret(name).await?.as_ref() != Some(expected) {
            return Ok(false);
        }
        self.write_secret(name, data).await?;
        Ok(true)
    }

    async fn write_secret(&self, name: &str, data: SecretData) -> Result<(), StoreError> {
        let path = self.secret_path(name);
        write_atomic(&path, &secret_to_file(&data)?, 0o600).map_err(io(path.display().to_string()))
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.secret_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io { what: format!("secret {name}"), source: e }),
        }
    }
}
