//! OPC UA on async-opcua's client: one session per equipment, opened on first use over the
//! security policy and mode the equipment declares (never a guessed one), re-established by the
//! client's own loop with backoff when the server goes away. Reads, writes and method calls are
//! requests on it, each bounded by the equipment's timeout; subscribed properties arrive through
//! one subscription (monitored items with their sampling interval and absolute deadband) instead
//! of being polled.
//!
//! Trust stays on the plant host: the agent's application instance certificate and the servers
//! it trusts live in its PKI folder (`own/`, `private/`, `trusted/`, `rejected/`). A server
//! certificate not in `trusted/` is refused and saved in `rejected/`; the error says which file
//! to move where. The session's socket carries the slice's fwmark and DSCP code point.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, future::BoxFuture};
use opcua::{
    client::{
        ClientBuilder, ConnectionSource, DataChangeCallback, IdentityToken, MonitoredItem, Session, SessionPollResult,
        transport::{
            Connector, RequestRecv, SecureChannelState, StreamConnection, StreamConnector, StreamTransport,
            TransportConfiguration,
        },
    },
    core::comms::tcp_codec::TcpCodec,
    crypto::SecurityPolicy,
    types::{
        AttributeId, CallMethodRequest, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, DecodingOptions,
        EndpointDescription, ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
        MonitoringParameters, NodeId, NumericRange, ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy,
        UserTokenType, Variant, WriteValue,
    },
};
use shopfloor_wire::proto::{
    MethodCall, OpcUa, OpcUaDataType, OpcUaNode, OpcUaSecurityMode, OpcUaSecurityPolicy, PropertyConfig, Value,
    ValueType, value::Kind,
};
use tokio::io::{ReadHalf, WriteHalf};

use super::{Driver, DriverError, Pushed};
use crate::slices::Marking;

/// What the plant host keeps for OPC UA: the PKI folder and the user the agent signs in as.
/// Nothing of it travels in a CRD.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Site {
    /// `own/cert.der` and `private/private.pem` (created on first use when missing), `trusted/`
    /// (the server certificates the plant engineer placed there), `rejected/`.
    pub pki_dir: PathBuf,
    /// User name and password by endpoint URL; an endpoint not listed is opened anonymously.
    pub users: HashMap<String, (String, String)>,
}

/// The session as the driver holds it.
struct Live {
    session: Arc<Session>,
    events: tokio::task::JoinHandle<()>,
    /// Set by the event loop when the session cannot come back (an untrusted certificate).
    fatal: Arc<Mutex<Option<DriverError>>>,
}

/// The subscription the driver made on its session, replaced when subscribed again.
#[derive(Default)]
struct SubscriptionId(Mutex<Option<(usize, u32)>>);

impl Drop for Live {
    fn drop(&mut self) {
        self.session.disable_reconnects();
        self.events.abort();
    }
}

/// What a subscription delivers to: each monitored node's property and type.
#[derive(Clone)]
struct Subscribed {
    properties: Vec<PropertyConfig>,
    to: tokio::sync::mpsc::Sender<Pushed>,
}

pub struct OpcUaDriver {
    cfg: OpcUa,
    site: Arc<Site>,
    equipment: String,
    timeout: Duration,
    marking: Option<Marking>,
    live: tokio::sync::Mutex<Option<Live>>,
    subscribed: Mutex<Option<Subscribed>>,
    subscription: SubscriptionId,
}

impl std::fmt::Debug for OpcUaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaDriver")
            .field("endpoint", &self.cfg.endpoint_url)
            .field("equipment", &self.equipment)
            .field("marking", &self.marking)
            .finish_non_exhaustive()
    }
}

fn security(cfg: &OpcUa, equipment: &str) -> Result<(SecurityPolicy, MessageSecurityMode), DriverError> {
    let policy = match cfg.security_policy() {
        OpcUaSecurityPolicy::None => SecurityPolicy::None,
        OpcUaSecurityPolicy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
        OpcUaSecurityPolicy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
        OpcUaSecurityPolicy::Unspecified => {
            return Err(DriverError::Security(format!(
                "equipment {equipment}: no OPC UA security policy given; refusing to guess one"
            )));
        }
    };
    let mode = match cfg.security_mode() {
        OpcUaSecurityMode::None => MessageSecurityMode::None,
        OpcUaSecurityMode::Sign => MessageSecurityMode::Sign,
        OpcUaSecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        OpcUaSecurityMode::Unspecified => {
            return Err(DriverError::Security(format!(
                "equipment {equipment}: no OPC UA security mode given; refusing to guess one"
            )));
        }
    };
    // None is all or nothing: a signed channel without a policy does not exist.
    if (policy == SecurityPolicy::None) != (mode == MessageSecurityMode::None) {
        return Err(DriverError::Security(format!(
            "equipment {equipment}: security policy {policy} with mode {mode:?} is not a valid OPC UA channel"
        )));
    }
    Ok((policy, mode))
}

/// The rejected certificate files, newest first, for the message that says which one to move.
fn rejected(pki: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(pki.join("rejected"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, p)| p).collect()
}

fn untrusted(site: &Site, url: &str) -> DriverError {
    let trusted = site.pki_dir.join("trusted");
    let what = match rejected(&site.pki_dir).first() {
        Some(file) => format!(
            "its certificate was saved as {}; if this is the right server, move that file into {} (the agent retries on the next request)",
            file.display(),
            trusted.display()
        ),
        None => format!("place the server's certificate (DER) in {}", trusted.display()),
    };
    DriverError::Security(format!("the OPC UA server at {url} is not trusted: {what}"))
}

fn request_failed(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Unreachable(format!("{what}: {e}"))
}

impl OpcUaDriver {
    pub fn new(equipment: &str, cfg: &OpcUa, site: Arc<Site>) -> Self {
        Self {
            cfg: cfg.clone(),
            site,
            equipment: equipment.to_owned(),
            timeout: Duration::from_millis(cfg.timeout_ms.max(100)),
            marking: None,
            live: tokio::sync::Mutex::new(None),
            subscribed: Mutex::new(None),
            subscription: SubscriptionId::default(),
        }
    }

    /// Marks the session's socket for a steered slice.
    #[must_use]
    pub fn with_marking(mut self, marking: Option<Marking>) -> Self {
        self.marking = marking;
        self
    }

    /// The live session, opening one when there is none (or the last one cannot come back).
    async fn session(&self) -> Result<Arc<Session>, DriverError> {
        self.session_opened().await.map(|(s, _)| s)
    }

    /// The live session, and whether it was opened (and subscribed) by this call.
    async fn session_opened(&self) -> Result<(Arc<Session>, bool), DriverError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            let fatal = l.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(e) = fatal {
                // Dropped: the next request starts afresh (after the engineer moved the file).
                *live = None;
                return Err(e);
            }
            let session = l.session.clone();
            drop(live);
            return match tokio::time::timeout(self.timeout, session.wait_for_connection()).await {
                Ok(true) => Ok((session, false)),
                _ => Err(DriverError::Unreachable(format!(
                    "{} (OPC UA session not re-established within {:?})",
                    self.cfg.endpoint_url, self.timeout
                ))),
            };
        }
        let opened = self.open().await?;
        let session = opened.session.clone();
        *live = Some(opened);
        drop(live);
        let subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(s) = subscribed {
            self.create_subscription(&session, &s).await?;
        }
        Ok((session, true))
    }

    async fn open(&self) -> Result<Live, DriverError> {
        let url = self.cfg.endpoint_url.as_str();
        let (policy, mode) = security(&self.cfg, &self.equipment)?;
        let builder = ClientBuilder::new()
            .application_name("Shopfloor agent")
            .application_uri("urn:shopfloor:agent")
            .product_uri("urn:shopfloor:agent")
            .pki_dir(self.site.pki_dir.clone())
            .create_sample_keypair(true)
            .trust_server_certs(false)
            .session_retry_limit(-1)
            .session_retry_initial(Duration::from_millis(500))
            .session_retry_max(Duration::from_secs(10))
            .request_timeout(self.timeout)
            .keep_alive_interval(Duration::from_secs(2))
            .max_failed_keep_alive_count(3)
            // What a property's value or a method's outputs can need, and no more: a server that
            // announces more is refused (`ChunkGuard` bounds each chunk on the wire).
            .max_message_size(MAX_MESSAGE_SIZE)
            .max_chunk_count(MAX_CHUNK_COUNT);
        // The first use of a PKI folder generates the agent's RSA key: seconds of CPU, off the
        // runtime's threads and outside any network timeout.
        let client = tokio::task::spawn_blocking(move || builder.client())
            .await
            .map_err(|e| DriverError::Security(format!("OPC UA client for {}: {e}", self.equipment)))?
            .map_err(|e| DriverError::Security(format!("OPC UA client for {}: {}", self.equipment, e.join("; "))))?;
        let (identity, token_type) = match self.site.users.get(url) {
            Some((user, password)) => (IdentityToken::new_user_name(user, password.as_str()), UserTokenType::UserName),
            None => (IdentityToken::Anonymous, UserTokenType::Anonymous),
        };
        let token = UserTokenPolicy { token_type, ..UserTokenPolicy::anonymous() };
        let wanted: EndpointDescription = (url, policy.to_uri(), mode, token).into();
        let marked = Marked {
            dscp_tos: self.marking.and_then(|m| m.dscp).map(|d| u32::from(d) << 2),
            fwmark: self.marking.map(|m| m.fwmark),
        };
        // Through the agent's own connector: marked for the slice, and every chunk checked.
        let discovery = MarkedConnector { url: url.to_owned(), marking: marked };
        let endpoints = tokio::time::timeout(self.timeout, client.get_server_endpoints_from_url(discovery))
            .await
            .map_err(|_| DriverError::Timeout(self.timeout))?
            .map_err(|e| DriverError::Unreachable(format!("{url}: {e}")))?;
        if !endpoints.iter().any(|e| e.security_policy_uri.as_ref() == policy.to_uri() && e.security_mode == mode) {
            let offered: Vec<String> =
                endpoints.iter().map(|e| format!("{} {:?}", e.security_policy_uri, e.security_mode)).collect();
            return Err(DriverError::Security(format!(
                "the OPC UA server at {url} offers no endpoint with {policy} and {mode:?} (it offers: {})",
                offered.join(", ")
            )));
        }
        let certs = client.certificate_store().clone();
        let (session, event_loop) = client
            .session_builder()
            .with_endpoints(endpoints)
            .with_connector(marked)
            .connect_to_matching_endpoint(wanted)
            .map_err(|e| DriverError::Security(format!("{url}: {e}")))?
            .user_identity_token(identity)
            .build(certs)
            .map_err(|e| DriverError::Security(format!("{url}: {e}")))?;
        let fatal: Arc<Mutex<Option<DriverError>>> = Arc::default();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), DriverError>>();
        let events = {
            let session = session.clone();
            let fatal = fatal.clone();
            let site = self.site.clone();
            let url = url.to_owned();
            let equipment = self.equipment.clone();
            tokio::spawn(async move {
                let mut first = Some(first_tx);
                let stream = event_loop.enter();
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    let failure = match event {
                        Ok(SessionPollResult::Reconnected(_)) => {
                            if let Some(f) = first.take() {
                                let _ = f.send(Ok(()));
                            } else {
                                tracing::info!(equipment, "OPC UA session to {url} re-established");
                            }
                            // async-opcua 0.19 re-creates the subscription (transferred, or made
                            // anew after a server restart) before it starts the new connection's
                            // publish loop, which ignores the publish asked for then and begins
                            // believing there is no subscription: without a publish asked for
                            // now, no change would ever arrive again.
                            session.trigger_publish_now();
                            None
                        }
                        Ok(SessionPollResult::ConnectionLost(code)) => {
                            tracing::warn!(equipment, "OPC UA session to {url} lost: {code}; reconnecting");
                            None
                        }
                        Ok(SessionPollResult::ReconnectFailed(code)) => match code {
                            StatusCode::BadCertificateUntrusted | StatusCode::BadSecurityChecksFailed => {
                                Some(untrusted(&site, &url))
                            }
                            StatusCode::BadUserAccessDenied
                            | StatusCode::BadIdentityTokenRejected
                            | StatusCode::BadIdentityTokenInvalid => Some(DriverError::Security(format!(
                                "the OPC UA server at {url} refused the agent's user ({code}); check the user and password for this endpoint in the agent's configuration"
                            ))),
                            other => {
                                tracing::debug!(equipment, "OPC UA session to {url}: reconnect failed: {other}");
                                None
                            }
                        },
                        Ok(_) => None,
                        Err(code) => Some(DriverError::Unreachable(format!("{url}: {code}"))),
                    };
                    if let Some(e) = failure {
                        tracing::warn!(equipment, "{e}");
                        session.disable_reconnects();
                        *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                        if let Some(f) = first.take() {
                            let _ = f.send(Err(e));
                        }
                        return;
                    }
                }
            })
        };
        let live = Live { session, events, fatal };
        // The secure channel's asymmetric handshake and the session's activation.
        match tokio::time::timeout(self.timeout * 2, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(live),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(DriverError::Unreachable(format!("{url}: the OPC UA session ended before it opened"))),
            Err(_) => Err(DriverError::Unreachable(format!("{url} (no OPC UA session within {:?})", self.timeout * 2))),
        }
    }

    /// A node id from the configuration: `ns=<i>;…` as is, `nsu=<uri>;…` through the server's
    /// namespace table.
    async fn node(&self, session: &Session, id: &str) -> Result<NodeId, DriverError> {
        let resolved = match id.strip_prefix("nsu=").and_then(|rest| rest.split_once(';')) {
            Some((uri, rest)) => {
                let index = session.get_namespace_index(uri).await.map_err(|e| {
                    DriverError::Unmapped(format!(
                        "{id}: the server at {} has no namespace {uri} ({e})",
                        self.cfg.endpoint_url
                    ))
                })?;
                format!("ns={index};{rest}")
            }
            None => id.to_owned(),
        };
        NodeId::from_str(&resolved).map_err(|_| DriverError::Unmapped(format!("{id} is not an OPC UA node id")))
    }

    async fn create_subscription(&self, session: &Arc<Session>, s: &Subscribed) -> Result<(), DriverError> {
        let mut by_node: HashMap<NodeId, (String, ValueType)> = HashMap::new();
        let mut items = Vec::new();
        for p in &s.properties {
            let Some(n) = &p.opcua else { continue };
            let node = self.node(session, &n.node_id).await?;
            by_node.insert(node.clone(), (p.name.clone(), p.r#type()));
            let filter = DataChangeFilter {
                trigger: DataChangeTrigger::StatusValue,
                deadband_type: if n.deadband > 0.0 { DeadbandType::Absolute as u32 } else { DeadbandType::None as u32 },
                deadband_value: n.deadband.max(0.0),
            };
            items.push(MonitoredItemCreateRequest::new(
                ReadValueId::new_value(node),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: 0,
                    sampling_interval: n.sampling_interval_ms as f64,
                    filter: ExtensionObject::from_message(filter),
                    queue_size: 1,
                    discard_oldest: true,
                },
            ));
        }
        let to = s.to.clone();
        let equipment = self.equipment.clone();
        let callback = DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
            let Some((name, ty)) = by_node.get(&item.item_to_monitor().node_id) else { return };
            let pushed = match dv.value.as_ref().map(|v| from_variant(v, *ty)) {
                Some(Ok(value)) if dv.status.is_none_or(|s| s.is_good()) => Ok(value),
                Some(Err(e)) => Err(e),
                _ => Err(DriverError::Exception(format!("{name}: {}", dv.status.unwrap_or(StatusCode::BadNoData)))),
            };
            // The callback runs inside the session's loop: never block it; a full queue
            // drops this change, and the next one carries the newer value.
            if to.try_send(Pushed { property: name.clone(), value: pushed }).is_err() {
                tracing::debug!(equipment, property = %name, "subscription change dropped: the reader is behind");
            }
        });
        let publishing = Duration::from_millis(self.cfg.publishing_interval_ms.max(50));
        // A subscription made earlier on this session (new properties, same driver) goes first,
        // or its changes would keep arriving beside the new one's.
        let session_key = Arc::as_ptr(session) as usize;
        let previous = self.subscription.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((on, old)) = previous
            && on == session_key
        {
            let _ = session.delete_subscription(old).await;
        }
        let id = session
            .create_subscription(publishing, 30, 10, 0, 0, true, callback)
            .await
            .map_err(|e| request_failed("create subscription", e))?;
        *self.subscription.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((session_key, id));
        let created = session
            .create_monitored_items(id, TimestampsToReturn::Both, items)
            .await
            .map_err(|e| request_failed("create monitored items", e))?;
        for (p, c) in s.properties.iter().filter(|p| p.opcua.is_some()).zip(&created) {
            if !c.result.status_code.is_good() {
                return Err(DriverError::Unmapped(format!(
                    "{}: the server refused to monitor {} ({})",
                    p.name,
                    p.opcua.as_ref().map_or("", |n| n.node_id.as_str()),
                    c.result.status_code
                )));
            }
        }
        Ok(())
    }
}

fn node_of(property: &PropertyConfig) -> Result<&OpcUaNode, DriverError> {
    property.opcua.as_ref().ok_or_else(|| DriverError::Unmapped(property.name.clone()))
}

/// A Shopfloor value as the OPC UA type the configuration names; out of that type's range is
/// an error, never a wrap.
pub fn to_variant(value: &Value, ty: OpcUaDataType) -> Result<Variant, DriverError> {
    let kind = value.kind.ok_or_else(|| DriverError::Value("no value".into()))?;
    let int = |lo: i128, hi: i128| -> Result<i128, DriverError> {
        let i = match kind {
            Kind::IntValue(i) => i128::from(i),
            Kind::FloatValue(f) if f.fract() == 0.0 && f.is_finite() => f as i128,
            Kind::BoolValue(b) => i128::from(b),
            Kind::FloatValue(f) => {
                return Err(DriverError::Value(format!("{f} is not a whole number for a {ty:?} node")));
            }
        };
        if i < lo || i > hi {
            return Err(DriverError::Value(format!("{i} does not fit the node's {ty:?} ({lo}..={hi})")));
        }
        Ok(i)
    };
    let float = || match kind {
        Kind::FloatValue(f) => f,
        Kind::IntValue(i) => i as f64,
        Kind::BoolValue(b) => f64::from(u8::from(b)),
    };
    Ok(match ty {
        OpcUaDataType::Boolean => match kind {
            Kind::BoolValue(b) => Variant::Boolean(b),
            _ => return Err(DriverError::Value("a Boolean node takes true or false".into())),
        },
        OpcUaDataType::Sbyte => Variant::SByte(int(i8::MIN.into(), i8::MAX.into())? as i8),
        OpcUaDataType::Byte => Variant::Byte(int(0, u8::MAX.into())? as u8),
        OpcUaDataType::Int16 => Variant::Int16(int(i16::MIN.into(), i16::MAX.into())? as i16),
        OpcUaDataType::Uint16 => Variant::UInt16(int(0, u16::MAX.into())? as u16),
        OpcUaDataType::Int32 => Variant::Int32(int(i32::MIN.into(), i32::MAX.into())? as i32),
        OpcUaDataType::Uint32 => Variant::UInt32(int(0, u32::MAX.into())? as u32),
        OpcUaDataType::Int64 => Variant::Int64(int(i64::MIN.into(), i64::MAX.into())? as i64),
        OpcUaDataType::Uint64 => Variant::UInt64(int(0, u64::MAX.into())? as u64),
        OpcUaDataType::Float => Variant::Float(float() as f32),
        OpcUaDataType::Double => Variant::Double(float()),
        OpcUaDataType::Unspecified => return Err(DriverError::Value("the node's data type is not given".into())),
    })
}

/// An OPC UA value as a Shopfloor value of the property's type.
pub fn from_variant(v: &Variant, ty: ValueType) -> Result<Value, DriverError> {
    let number = match v {
        Variant::Boolean(b) => {
            return match ty {
                ValueType::Bool => Ok(Value { kind: Some(Kind::BoolValue(*b)) }),
                _ => Err(DriverError::Value(format!("the node holds a Boolean, the property is {ty:?}"))),
            };
        }
        Variant::SByte(x) => f64::from(*x),
        Variant::Byte(x) => f64::from(*x),
        Variant::Int16(x) => f64::from(*x),
        Variant::UInt16(x) => f64::from(*x),
        Variant::Int32(x) => f64::from(*x),
        Variant::UInt32(x) => f64::from(*x),
        Variant::Int64(x) => *x as f64,
        Variant::UInt64(x) => *x as f64,
        Variant::Float(x) => f64::from(*x),
        Variant::Double(x) => *x,
        other => {
            return Err(DriverError::Value(format!(
                "the node holds a {:?}, which no Shopfloor property type carries",
                other.type_id()
            )));
        }
    };
    match ty {
        ValueType::Float => Ok(Value { kind: Some(Kind::FloatValue(number)) }),
        ValueType::Int => match v {
            Variant::Float(_) | Variant::Double(_) if number.fract() != 0.0 => {
                Err(DriverError::Value(format!("the node holds {number}, the property is an integer")))
            }
            Variant::Int64(x) => Ok(Value { kind: Some(Kind::IntValue(*x)) }),
            Variant::UInt64(x) => i64::try_from(*x)
                .map(|i| Value { kind: Some(Kind::IntValue(i)) })
                .map_err(|_| DriverError::Value(format!("{x} does not fit a 64-bit signed integer"))),
            _ => Ok(Value { kind: Some(Kind::IntValue(number as i64)) }),
        },
        ValueType::Bool => Err(DriverError::Value(format!("the node holds the number {number}, the property is bool"))),
        ValueType::Unspecified => Err(DriverError::Value("the property's type is not given".into())),
    }
}

fn status(what: &str, code: StatusCode) -> DriverError {
    match code {
        StatusCode::BadNodeIdUnknown | StatusCode::BadNodeIdInvalid => {
            DriverError::Unmapped(format!("{what}: the server has no such node ({code})"))
        }
        _ => DriverError::Exception(format!("{what}: {code}")),
    }
}

impl Driver for OpcUaDriver {
    fn read<'a>(&'a self, property: &'a PropertyConfig) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move {
            let n = node_of(property)?;
            let session = self.session().await?;
            let node = self.node(&session, &n.node_id).await?;
            let values = tokio::time::timeout(
                self.timeout,
                session.read(&[ReadValueId::new_value(node)], TimestampsToReturn::Neither, 0.0),
            )
            .await
            .map_err(|_| DriverError::Timeout(self.timeout))?
            .map_err(|e| request_failed(&format!("read {}", n.node_id), e))?;
            let dv = values.into_iter().next().ok_or_else(|| DriverError::Exception("empty read response".into()))?;
            if let Some(code) = dv.status.filter(|s| !s.is_good()) {
                return Err(status(&format!("read {}", n.node_id), code));
            }
            let v = dv.value.ok_or_else(|| DriverError::Exception(format!("read {}: no value", n.node_id)))?;
            from_variant(&v, property.r#type()).map_err(|e| DriverError::Value(format!("{}: {e}", n.node_id)))
        })
    }

    fn write<'a>(&'a self, property: &'a PropertyConfig, value: &'a Value) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let n = node_of(property)?;
            let variant = to_variant(value, n.data_type())?;
            let session = self.session().await?;
            let node = self.node(&session, &n.node_id).await?;
            let write = WriteValue {
                node_id: node,
                attribute_id: AttributeId::Value as u32,
                index_range: NumericRange::None,
                value: DataValue::value_only(variant),
            };
            let codes = tokio::time::timeout(self.timeout, session.write(&[write]))
                .await
                .map_err(|_| DriverError::Timeout(self.timeout))?
                .map_err(|e| DriverError::Lost(format!("write {}: {e}", n.node_id)))?;
            match codes.first() {
                Some(c) if c.is_good() => Ok(()),
                Some(c) => Err(status(&format!("write {}", n.node_id), *c)),
                None => Err(DriverError::Exception("empty write response".into())),
            }
        })
    }

    fn call<'a>(
        &'a self,
        method: &'a MethodCall,
        inputs: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Value>, DriverError>> {
        Box::pin(async move {
            if inputs.len() != method.inputs.len() {
                return Err(DriverError::Value(format!(
                    "{} takes {} arguments, {} given",
                    method.method_id,
                    method.inputs.len(),
                    inputs.len()
                )));
            }
            let args = inputs
                .iter()
                .zip(&method.inputs)
                .map(|(v, a)| to_variant(v, a.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            let session = self.session().await?;
            let object = self.node(&session, &method.object_id).await?;
            let id = self.node(&session, &method.method_id).await?;
            let request: CallMethodRequest = (object, id, Some(args)).into();
            let result = tokio::time::timeout(self.timeout, session.call_one(request))
                .await
                .map_err(|_| DriverError::Timeout(self.timeout))?
                .map_err(|e| DriverError::Lost(format!("call {}: {e}", method.method_id)))?;
            if !result.status_code.is_good() {
                return Err(status(&format!("call {}", method.method_id), result.status_code));
            }
            let outputs = result.output_arguments.unwrap_or_default();
            outputs
                .iter()
                .zip(&method.outputs)
                .map(|(v, name)| {
                    let ty = match v {
                        Variant::Boolean(_) => ValueType::Bool,
                        Variant::Float(_) | Variant::Double(_) => ValueType::Float,
                        _ => ValueType::Int,
                    };
                    from_variant(v, ty).map_err(|e| DriverError::Value(format!("output {name}: {e}")))
                })
                .collect()
        })
    }

    fn subscribe<'a>(
        &'a self,
        properties: &'a [PropertyConfig],
        to: tokio::sync::mpsc::Sender<Pushed>,
    ) -> BoxFuture<'a, Result<bool, DriverError>> {
        Box::pin(async move {
            let s = Subscribed { properties: properties.to_vec(), to };
            *self.subscribed.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
            // A session opened by this call subscribed as it opened; one already open did not.
            let (session, opened) = self.session_opened().await?;
            if !opened {
                self.create_subscription(&session, &s).await?;
            }
            Ok(true)
        })
    }
}

/// The session's transport: a TCP socket with the slice's fwmark and DSCP set before it
/// connects, so every packet of the session rides the slice.
#[derive(Clone, Copy, Debug)]
struct Marked {
    dscp_tos: Option<u32>,
    fwmark: Option<u32>,
}

struct MarkedConnector {
    url: String,
    marking: Marked,
}

/// The largest message the agent takes from an OPC UA server, reassembled: scalar values and
/// method outputs need a few KiB.
const MAX_MESSAGE_SIZE: usize = 1 << 20;
/// The most chunks one message may come in.
const MAX_CHUNK_COUNT: usize = 32;

/// Reads an OPC UA server's byte stream, checking each chunk's header before any of its body
/// is buffered: a chunk larger than the receive buffer the agent announced (its `limit`) is a
/// protocol violation, and the client's codec would buffer whatever size a header announces (a
/// hostile server declaring 4 GiB and streaming zeros took the agent from 15 MB to 1 GB in under
/// a second). Refused with an error that ends the connection.
pub(crate) struct ChunkGuard<R> {
    inner: R,
    limit: usize,
    header: [u8; 8],
    have: usize,
    left: usize,
}

impl<R> ChunkGuard<R> {
    pub(crate) fn new(inner: R, limit: usize) -> Self {
        Self { inner, limit, header: [0; 8], have: 0, left: 0 }
    }

    /// Follows the chunk boundaries through `bytes`, just read.
    fn inspect(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (8 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 8 {
                self.have = 0;
                let size =
                    u32::from_le_bytes([self.header[4], self.header[5], self.header[6], self.header[7]]) as usize;
                if !(8..=self.limit).contains(&size) {
                    OPCUA_REFUSED.inc();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the OPC UA server announced a {size}-byte chunk; this agent takes at most {} (its receive buffer): refused",
                            self.limit
                        ),
                    ));
                }
                self.left = size - 8;
            }
        }
        Ok(())
    }
}

/// Chunks refused for their size since the agent started, over every OPC UA connection
/// (`shopfloor_agent_opcua_chunks_refused_total`).
pub static OPCUA_REFUSED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ChunkGuard<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            let fresh = buf.filled()[before..].to_vec();
            if let Err(e) = self.inspect(&fresh) {
                return std::task::Poll::Ready(Err(e));
            }
        }
        polled
    }
}

type GuardedTcp = ChunkGuard<ReadHalf<tokio::net::TcpStream>>;

async fn dial(
    url: String,
    options: DecodingOptions,
    marking: Marked,
    limit: usize,
) -> Result<StreamConnection<GuardedTcp, WriteHalf<tokio::net::TcpStream>>, opcua::types::Error> {
    use opcua::types::Error;
    let (host, port) = opcua::core::comms::url::hostname_port_from_url(&url, 4840)
        .map_err(|e| Error::new(e, format!("{url} is not an opc.tcp URL")))?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Error::new(StatusCode::BadTcpEndpointUrlInvalid, e))?
        .next()
        .ok_or_else(|| Error::new(StatusCode::BadTcpEndpointUrlInvalid, format!("{host} does not resolve")))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(|e| Error::new(StatusCode::BadCommunicationError, e))?;
    let mark = |r: std::io::Result<()>| r.map_err(|e| Error::new(StatusCode::BadCommunicationError, e));
    #[cfg(target_os = "linux")]
    if let Some(m) = marking.fwmark {
        mark(socket.set_mark(m))?;
    }
    if let Some(tos) = marking.dscp_tos {
        mark(if addr.is_ipv4() { socket.set_tos_v4(tos) } else { socket.set_tclass_v6(tos) })?;
    }
    mark(socket.set_nonblocking(true))?;
    let stream = tokio::net::TcpSocket::from_std_stream(socket.into())
        .connect(addr)
        .await
        .map_err(|e| Error::new(StatusCode::BadCommunicationError, e))?;
    let _ = stream.set_nodelay(true);
    let (r, w) = tokio::io::split(stream);
    let r = ChunkGuard::new(r, limit);
    Ok(StreamConnection::new(tokio_util::codec::FramedRead::new(r, TcpCodec::new(options)), w, url))
}

impl Connector for MarkedConnector {
    type Transport = StreamTransport<GuardedTcp, WriteHalf<tokio::net::TcpStream>>;

    async fn connect(
        &self,
        channel: Arc<SecureChannelState>,
        requests: RequestRecv,
        config: TransportConfiguration,
    ) -> Result<Self::Transport, opcua::types::Error> {
        let marking = self.marking;
        let limit = config.recv_buffer_size;
        StreamConnector::new(move |url, options| dial(url, options, marking, limit), self.url.clone())
            .connect(channel, requests, config)
            .await
    }

    fn default_endpoint(&self) -> EndpointDescription {
        self.url.as_str().into()
    }
}

impl ConnectionSource for Marked {
    type Builder = MarkedConnector;

    fn get_connector(&self, endpoint: &EndpointDescription) -> Result<MarkedConnector, opcua::types::Error> {
        Ok(MarkedConnector { url: endpoint.endpoint_url.as_ref().to_owned(), marking: *self })
    }
}

#[cfg(test)]
mod chunk_guard_tests {
    use super::*;

    /// A chunk announcing more than the receive buffer is refused at its header, wherever the
    /// reads happen to split the stream; chunks within it pass untouched.
    #[test]
    fn the_chunk_guard_refuses_an_oversized_chunk_at_its_header() {
        let chunk = |size: u32| {
            let mut c = b"MSGF".to_vec();
            c.extend_from_slice(&size.to_le_bytes());
            c.resize(size as usize, 0);
            c
        };
        let mut stream = chunk(100);
        stream.extend(chunk(8));
        stream.extend(chunk(65_535));
        let mut g = ChunkGuard::new((), 65_535);
        for piece in stream.chunks(7) {
            g.inspect(piece).expect("within the limit");
        }
        let mut hostile = b"ACKF".to_vec();
        hostile.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let mut g = ChunkGuard::new((), 65_535);
        g.inspect(&hostile[..5]).expect("not a whole header yet");
        let e = g.inspect(&hostile[5..]).expect_err("refused");
        assert!(e.to_string().contains("4294967280-byte chunk"), "{e}");
        let mut tiny = b"MSGF".to_vec();
        tiny.extend_from_slice(&3u32.to_le_bytes());
        assert!(ChunkGuard::new((), 65_535).inspect(&tiny).is_err(), "shorter than its own header");
    }
}
