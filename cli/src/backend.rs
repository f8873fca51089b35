//! Where the plugin reads and writes: the API server of the current kubeconfig context, or a
//! standalone controller's folders.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, api::PostParams};
use serde::Deserialize;
use shopfloor_api::{ControlCommand, EdgeAgent, Equipment, manifest};

use shopfloor_api::contract::{CA_SECRET, state_dir, token_keys, token_secret_name as token_secret};

pub enum Backend {
    Kube { client: Client, namespace: String, controller_namespace: String },
    Folder { plant: PathBuf, state: PathBuf, namespace: String },
}

#[derive(Deserialize)]
struct ObjectState {
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    deleted: bool,
    #[serde(default, rename = "creationTimestamp")]
    creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(Deserialize)]
struct SecretFile {
    data: std::collections::BTreeMap<String, String>,
}

impl Backend {
    pub fn namespace(&self) -> &str {
        match self {
            Backend::Kube { namespace, .. } | Backend::Folder { namespace, .. } => namespace,
        }
    }

    fn folder_objects<T: serde::de::DeserializeOwned + Clone>(
        &self,
        plant: &Path,
        state: &Path,
        kind: &str,
        plural: &str,
    ) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::new();
        for loaded in manifest::load_valid(plant)? {
            let Ok((_, obj)) = loaded else { continue };
            if obj.kind() != kind || obj.namespace().unwrap_or("default") != self.namespace() {
                continue;
            }
            let mut json = match obj {
                manifest::Object::EdgeAgent(o) => serde_json::to_value(o)?,
                manifest::Object::Equipment(o) => serde_json::to_value(o)?,
                manifest::Object::NetworkSlice(o) => serde_json::to_value(o)?,
                manifest::Object::ControlCommand(o) => serde_json::to_value(o)?,
            };
            let name = json["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let path = state_dir::object(state, plural, self.namespace(), &name);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let st: ObjectState =
                    serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
                if st.deleted {
                    continue;
                }
                if let Some(status) = st.status {
                    json["status"] = status;
                }
                if let Some(t) = st.creation_timestamp {
                    json["metadata"]["creationTimestamp"] = serde_json::to_value(t)?;
                }
            }
            out.push(serde_json::from_value(json)?);
        }
        Ok(out)
    }

    pub async fn agents(&self) -> anyhow::Result<Vec<EdgeAgent>> {
        match self {
            Backend::Kube { client, namespace, .. } => {
                Ok(Api::<EdgeAgent>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items)
            }
            Backend::Folder { plant, state, .. } => self.folder_objects(plant, state, "EdgeAgent", "edgeagents"),
        }
    }

    pub async fn equipment(&self) -> anyhow::Result<Vec<Equipment>> {
        match self {
            Backend::Kube { client, namespace, .. } => {
                Ok(Api::<Equipment>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items)
            }
            Backend::Folder { plant, state, .. } => self.folder_objects(plant, state, "Equipment", "equipment"),
        }
    }

    pub async fn command(&self, name: &str) -> anyhow::Result<Option<ControlCommand>> {
        match self {
            Backend::Kube { client, namespace, .. } => {
                Ok(Api::<ControlCommand>::namespaced(client.clone(), namespace).get_opt(name).await?)
            }
            Backend::Folder { plant, state, .. } => Ok(self
                .folder_objects::<ControlCommand>(plant, state, "ControlCommand", "controlcommands")?
                .into_iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))),
        }
    }

    /// Creates the command: in the API server, or as a manifest file in the plant folder.
    pub async fn create_command(&self, cmd: &ControlCommand) -> anyhow::Result<()> {
        match self {
            Backend::Kube { client, namespace, .. } => {
                Api::<ControlCommand>::namespaced(client.clone(), namespace)
                    .create(&PostParams::default(), cmd)
                    .await?;
                Ok(())
            }
            Backend::Folder { plant, .. } => {
                let name = cmd.metadata.name.as_deref().unwrap_or_default();
                let path = plant.join(format!("cmd-{name}.yaml"));
                if path.exists() {
                    bail!("{} already exists", path.display());
                }
                // Written under a hidden name then renamed: the controller never reads half a file.
                let tmp = plant.join(format!(".cmd-{name}.yaml.tmp"));
                std::fs::write(&tmp, serde_yaml::to_string(cmd)?)?;
                std::fs::rename(&tmp, &path)?;
                Ok(())
            }
        }
    }

    async fn secret(&self, name: &str) -> anyhow::Result<Option<std::collections::BTreeMap<String, Vec<u8>>>> {
        match self {
            Backend::Kube { client, controller_namespace, .. } => {
                let s: Option<Secret> = Api::namespaced(client.clone(), controller_namespace).get_opt(name).await?;
                Ok(s.map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
            }
            Backend::Folder { state, .. } => {
                let path = state_dir::secret(state, name);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let f: SecretFile =
                            serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
                        Ok(Some(f.data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
                }
            }
        }
    }

    /// The agent's bootstrap token (`<id>.<secret>`), its expiry and whether it was used.
    pub async fn token(&self, agent: &str) -> anyhow::Result<Option<(String, String, bool)>> {
        let Some(data) = self.secret(&token_secret(self.namespace(), agent)).await? else { return Ok(None) };
        let s = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        Ok(Some((
            format!("{}.{}", s(token_keys::ID), s(token_keys::SECRET)),
            s(token_keys::EXPIRES_AT),
            data.contains_key(token_keys::USED_AT),
        )))
    }

    /// SHA-256 of the plant CA certificate (DER), hex: what agents pin at enrollment.
    pub async fn ca_fingerprint(&self) -> anyhow::Result<Option<String>> {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        use sha2::{Digest, Sha256};
        let Some(data) = self.secret(CA_SECRET).await? else { return Ok(None) };
        let pem = data.get("ca.crt").context("the CA secret has no ca.crt")?;
        let der = CertificateDer::from_pem_slice(pem).context("ca.crt is not a PEM certificate")?;
        Ok(Some(hex::encode(Sha256::digest(der.as_ref()))))
    }

    /// Where agents dial the controller, if the standalone controller recorded it.
    pub fn recorded_endpoint(&self) -> Option<String> {
        match self {
            Backend::Folder { state, .. } => {
                std::fs::read_to_string(state.join(state_dir::ENDPOINT)).ok().map(|s| s.trim().to_owned())
            }
            Backend::Kube { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock;

    fn kube() -> (Backend, mock::Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "plant-a");
        (Backend::Kube { client, namespace: "plant-a".into(), controller_namespace: "shopfloor-system".into() }, handle)
    }

    fn ok(send: mock::SendResponse<Response<Body>>, body: serde_json::Value) {
        send.send_response(
            Response::builder().body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response"),
        );
    }

    #[tokio::test]
    async fn agents_are_listed_in_the_current_namespace() {
        let (b, mut handle) = kube();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("list");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(req.uri().path(), "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/edgeagents");
            ok(
                send,
                json!({"apiVersion": "shopfloor.io/v1alpha1", "kind": "EdgeAgentList", "metadata": {}, "items": [
                    {"apiVersion": "shopfloor.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": "line-1", "namespace": "plant-a"},
                     "spec": {"site": "plant-a/line-1"}, "status": {"phase": "Connected"}}
                ]}),
            );
        });
        let agents = b.agents().await.expect("agents");
        assert_eq!(agents.len(), 1);
        assert_eq!(
            agents[0].status.as_ref().and_then(|s| s.phase),
            Some(shopfloor_api::edge_agent::AgentPhase::Connected)
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn exec_creates_the_command_in_the_api_server() {
        let (b, mut handle) = kube();
        let cmd = ControlCommand::new(
            "c1",
            shopfloor_api::ControlCommandSpec {
                equipment_ref: shopfloor_api::LocalRef::new("press-plc"),
                action: "stop".into(),
                parameters: Default::default(),
                timeout: std::time::Duration::from_secs(5).into(),
                when_offline: Default::default(),
                preconditions: vec![],
                dry_run: false,
                require_link_within_budget: None,
                ttl_seconds_after_finished: None,
            },
        );
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("create");
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(req.uri().path(), "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/controlcommands");
            let body: serde_json::Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
            assert_eq!(body["spec"]["action"], "stop");
            ok(send, body);
        });
        b.create_command(&cmd).await.expect("created");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn the_token_is_read_from_the_controller_namespace() {
        let (b, mut handle) = kube();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("get");
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-bootstrap-plant-a-line-1"
            );
            ok(
                send,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
                "data": {"token-id": "YWJjZGVm", "token-secret": "MDEyMzQ1Njc4OWFiY2RlZg==", "expires-at": "MjAyNi0xMS0yNVQwMDowMDowMFo="}}),
            );
        });
        let (token, expires, used) = b.token("line-1").await.expect("token").expect("present");
        assert_eq!(token, "abcdef.0123456789abcdef");
        assert_eq!(expires, "2026-11-25T00:00:00Z");
        assert!(!used);
        server.await.expect("server");
    }
}
