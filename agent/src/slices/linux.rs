//! The Linux slice backend: steers each slice's traffic through rtnetlink, never by shelling out.
//!
//! For a slice it holds, on the host:
//! - a route `default dev <interface>` (IPv4 and IPv6) in the slice's routing table;
//! - a rule `fwmark <mark> lookup <table>` (IPv4 and IPv6) at priority [`RULE_PRIORITY`];
//! - a TBF root qdisc on the interface at the slice's uplink MBR (handle [`SHAPER_MAJOR`]`:`).
//!
//! The agent's own connections to the slice's equipment carry the mark and the DSCP code point
//! (see [`super::Marking`]), which is what routes them through the table and shapes them.
//!
//! Every route and rule it creates carries the routing protocol [`OWNER_PROTOCOL`], and its
//! qdisc the handle major [`SHAPER_MAJOR`]: that is how a later apply — also after a restart —
//! finds and removes exactly what the agent created and nothing an operator put there.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt, future::BoxFuture};
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_core::{DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::LinkAttribute,
        route::{RouteAttribute, RouteMessage, RouteProtocol},
        rule::{RuleAction, RuleAttribute, RuleMessage},
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
    },
};
use shopfloor_wire::proto::{EquipmentConfig, SliceConfig, SliceResult};

use super::SliceBackend;

/// Routing protocol number on the routes and rules the agent owns (`ip route show proto 83`).
pub const OWNER_PROTOCOL: u8 = 83;
/// Handle major of the agent's shaping qdisc (`tc qdisc show` prints it as `5346:`).
pub const SHAPER_MAJOR: u16 = 0x5346;
/// Priority of the fwmark rules: before `main` (32766), after the kernel's `local` (0).
pub const RULE_PRIORITY: u32 = 10_000;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const EAFNOSUPPORT: i32 = 97;
const EPERM: i32 = 1;

/// Steers slices through netlink. Applies are serialised: each one reconciles the whole host.
#[derive(Debug, Default)]
pub struct Netlink {
    turn: tokio::sync::Mutex<()>,
}

impl SliceBackend for Netlink {
    fn apply<'a>(&'a self, slices: &'a [SliceConfig], _: &'a [EquipmentConfig]) -> BoxFuture<'a, Vec<SliceResult>> {
        Box::pin(async move {
            let _turn = self.turn.lock().await;
            match reconcile(slices).await {
                Ok(results) => results,
                Err(e) => slices
                    .iter()
                    .map(|s| SliceResult { slice: s.name.clone(), ok: false, message: e.clone() })
                    .collect(),
            }
        })
    }

    fn steers(&self) -> bool {
        true
    }
}

/// A slice the host should hold.
struct Wanted<'a> {
    slice: &'a SliceConfig,
    ifindex: u32,
}

/// A netlink failure in words an operator can act on.
fn explain(what: &str, e: &rtnetlink::Error) -> String {
    let code = match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    };
    match code {
        Some(EPERM) => format!(
            "{what}: permission denied — the agent needs CAP_NET_ADMIN (with the Debian package: the slices.conf drop-in in /usr/share/doc/shopfloor-agent) \
             or --slice-backend noop"
        ),
        Some(c) => format!("{what}: {} (errno {c})", std::io::Error::from_raw_os_error(c)),
        None => format!("{what}: {e}"),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Reconciles the host onto `slices`; a failure of one slice is reported on that slice only.
async fn reconcile(slices: &[SliceConfig]) -> Result<Vec<SliceResult>, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let conn = tokio::spawn(conn);
    let out = reconcile_with(&handle, slices).await;
    conn.abort();
    out
}

async fn reconcile_with(handle: &Handle, slices: &[SliceConfig]) -> Result<Vec<SliceResult>, String> {
    let links = links(handle).await?;
    // The first failure of each slice, by slice name.
    let mut errors: HashMap<String, String> = HashMap::new();
    let mut wanted: Vec<Wanted<'_>> = Vec::new();
    for s in slices {
        let clash = wanted.iter().find_map(|w| {
            let o = w.slice;
            let what = if o.interface == s.interface {
                format!("interface {}", s.interface)
            } else if o.routing_table == s.routing_table {
                format!("routing table {}", s.routing_table)
            } else if o.fwmark == s.fwmark {
                format!("fwmark {:#x}", s.fwmark)
            } else {
                return None;
            };
            Some(format!("{what} is already used by slice {} on this agent; give each slice its own", o.name))
        });
        if let Some(msg) = clash {
            errors.insert(s.name.clone(), msg);
            continue;
        }
        match links.get(&s.interface) {
            Some(&ifindex) => wanted.push(Wanted { slice: s, ifindex }),
            None => {
                errors.insert(
                    s.name.clone(),
                    format!(
                        "interface {} does not exist on this host (is the slice's PDU session up?); \
                         its steering is set up by the next configuration apply",
                        s.interface
                    ),
                );
            }
        }
    }
    let mut fail = |slice: &str, msg: String| {
        tracing::warn!(slice, "{msg}");
        errors.entry(slice.to_owned()).or_insert(msg);
    };

    for version in [IpVersion::V4, IpVersion::V6] {
        reconcile_rules(handle, version.clone(), &wanted, &mut fail).await?;
        reconcile_routes(handle, version, &wanted, &mut fail).await?;
    }
    reconcile_shapers(handle, &wanted, &mut fail).await?;

    Ok(slices
        .iter()
        .map(|s| match errors.get(&s.name) {
            Some(msg) => SliceResult { slice: s.name.clone(), ok: false, message: msg.clone() },
            None => SliceResult {
                slice: s.name.clone(),
                ok: true,
                message: format!(
                    "fwmark {:#x} → table {} → dev {}{}{}",
                    s.fwmark,
                    s.routing_table,
                    s.interface,
                    s.dscp.map(|d| format!(", DSCP {d}")).unwrap_or_default(),
                    if s.mbr_uplink_bps > 0 {
                        format!(", shaped to {} bit/s", s.mbr_uplink_bps)
                    } else {
                        String::new()
                    }
                ),
            },
        })
        .collect())
}

async fn links(handle: &Handle) -> Result<HashMap<String, u32>, String> {
    let mut out = HashMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(link) = dump.try_next().await.map_err(|e| explain("cannot list network interfaces", &e))? {
        for a in &link.attributes {
            if let LinkAttribute::IfName(name) = a {
                out.insert(name.clone(), link.header.index);
            }
        }
    }
    Ok(out)
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(r.header.table))
}

fn rule_mark(r: &RuleMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| if let RuleAttribute::FwMark(m) = a { Some(*m) } else { None })
}

fn owned_rule(r: &RuleMessage) -> bool {
    r.attributes.iter().any(|a| matches!(a, RuleAttribute::Protocol(p) if *p == RouteProtocol::from(OWNER_PROTOCOL)))
}

async fn reconcile_rules(
    handle: &Handle,
    version: IpVersion,
    wanted: &[Wanted<'_>],
    fail: &mut impl FnMut(&str, String),
) -> Result<(), String> {
    let family = if version == IpVersion::V4 { "IPv4" } else { "IPv6" };
    let ours: Vec<RuleMessage> = match handle.rule().get(version.clone()).execute().try_collect::<Vec<_>>().await {
        Ok(rules) => rules.into_iter().filter(owned_rule).collect(),
        Err(e) if version == IpVersion::V6 && errno(&e) == Some(EAFNOSUPPORT) => return Ok(()),
        Err(e) => return Err(explain(&format!("cannot list {family} rules"), &e)),
    };
    for rule in &ours {
        let keep =
            wanted.iter().any(|w| rule_mark(rule) == Some(w.slice.fwmark) && rule_table(rule) == w.slice.routing_table);
        if !keep {
            let (mark, table) = (rule_mark(rule).unwrap_or(0), rule_table(rule));
            tracing::info!(mark = format!("{mark:#x}"), table, "removing {family} rule of a slice no longer held");
            if let Err(e) = handle.rule().del(rule.clone()).execute().await {
                return Err(explain(&format!("cannot remove {family} rule fwmark {mark:#x} lookup {table}"), &e));
            }
        }
    }
    for w in wanted {
        let s = w.slice;
        let present = ours.iter().any(|r| rule_mark(r) == Some(s.fwmark) && rule_table(r) == s.routing_table);
        if present {
            continue;
        }
        let mut req = handle.rule().add().table_id(s.routing_table).fw_mark(s.fwmark).priority(RULE_PRIORITY);
        req = req.action(RuleAction::ToTable);
        req.message_mut().attributes.push(RuleAttribute::Protocol(RouteProtocol::from(OWNER_PROTOCOL)));
        let result = match version {
            IpVersion::V4 => req.v4().execute().await,
            IpVersion::V6 => req.v6().execute().await,
        };
        if let Err(e) = result {
            fail(
                &s.name,
                explain(&format!("cannot add {family} rule fwmark {:#x} lookup {}", s.fwmark, s.routing_table), &e),
            );
        }
    }
    Ok(())
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(r.header.table))
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
}

async fn reconcile_routes(
    handle: &Handle,
    version: IpVersion,
    wanted: &[Wanted<'_>],
    fail: &mut impl FnMut(&str, String),
) -> Result<(), String> {
    let family = if version == IpVersion::V4 { "IPv4" } else { "IPv6" };
    let filter = match version {
        IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    let ours: Vec<RouteMessage> = match handle.route().get(filter).execute().try_collect::<Vec<_>>().await {
        Ok(routes) => routes.into_iter().filter(|r| r.header.protocol == RouteProtocol::from(OWNER_PROTOCOL)).collect(),
        Err(e) if version == IpVersion::V6 && errno(&e) == Some(EAFNOSUPPORT) => return Ok(()),
        Err(e) => return Err(explain(&format!("cannot list {family} routes"), &e)),
    };
    for route in &ours {
        let keep = wanted.iter().any(|w| {
            route_table(route) == w.slice.routing_table
                && route_oif(route) == Some(w.ifindex)
                && route.header.destination_prefix_length == 0
        });
        if !keep {
            let table = route_table(route);
            tracing::info!(table, "removing {family} route of a slice no longer held");
            if let Err(e) = handle.route().del(route.clone()).execute().await {
                return Err(explain(&format!("cannot remove the {family} default route in table {table}"), &e));
            }
        }
    }
    for w in wanted {
        let s = w.slice;
        let msg = match version {
            IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(s.routing_table)
                .output_interface(w.ifindex)
                .protocol(RouteProtocol::from(OWNER_PROTOCOL))
                .build(),
            IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(s.routing_table)
                .output_interface(w.ifindex)
                .protocol(RouteProtocol::from(OWNER_PROTOCOL))
                .build(),
        };
        match handle.route().add(msg).replace().execute().await {
            Ok(()) => {}
            // IPv6 disabled on the interface or host: the slice still steers IPv4.
            Err(e) if version == IpVersion::V6 && matches!(errno(&e), Some(EAFNOSUPPORT) | Some(13)) => {}
            Err(e) => fail(
                &s.name,
                explain(
                    &format!("cannot add {family} default route via {} in table {}", s.interface, s.routing_table),
                    &e,
                ),
            ),
        }
    }
    Ok(())
}

/// `struct tc_tbf_qopt` with rate only (no peak rate), in host byte order as netlink wants.
fn tbf_options(rate_bps: u64) -> Vec<TcOption> {
    let bytes_per_s = rate_bps / 8;
    // Burst: 10 ms at the rate, at least ten full-size frames so the shaper never starves a
    // single packet; queue: the burst plus 50 ms at the rate, so control traffic queues briefly.
    let burst = (bytes_per_s / 100).clamp(15_140, u64::from(u32::MAX)) as u32;
    let limit = (u64::from(burst) + bytes_per_s / 20).min(u64::from(u32::MAX)) as u32;
    let mut parms = Vec::with_capacity(36);
    parms.push(0); // cell_log
    parms.push(TC_LINKLAYER_ETHERNET);
    parms.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    parms.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    parms.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    parms.extend_from_slice(&(bytes_per_s.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    parms.extend_from_slice(&[0; 12]); // peak rate: none
    parms.extend_from_slice(&limit.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes()); // buffer: derived from TCA_TBF_BURST
    parms.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only used with a peak rate
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, parms))];
    if bytes_per_s > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, bytes_per_s.to_ne_bytes().to_vec())));
    }
    opts.push(TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())));
    opts
}

async fn send(handle: &Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    let mut response = handle.request(req)?;
    while let Some(m) = response.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

async fn reconcile_shapers(
    handle: &Handle,
    wanted: &[Wanted<'_>],
    fail: &mut impl FnMut(&str, String),
) -> Result<(), String> {
    let qdiscs: Vec<TcMessage> = handle
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| explain("cannot list queueing disciplines", &e))?;
    let kind = |q: &TcMessage| {
        q.attributes
            .iter()
            .find_map(|a| if let TcAttribute::Kind(k) = a { Some(k.clone()) } else { None })
            .unwrap_or_default()
    };
    let roots: HashMap<u32, &TcMessage> =
        qdiscs.iter().filter(|q| q.header.parent == TcHandle::ROOT).map(|q| (q.header.index as u32, q)).collect();
    for (&ifindex, q) in &roots {
        let shaped = wanted.iter().any(|w| w.ifindex == ifindex && w.slice.mbr_uplink_bps > 0);
        if q.header.handle.major == SHAPER_MAJOR && !shaped {
            tracing::info!(ifindex, "removing the shaper of a slice no longer held");
            let mut del = TcMessage::with_index(ifindex as i32);
            del.header.parent = TcHandle::ROOT;
            del.header.handle = q.header.handle;
            if let Err(e) = send(handle, RouteNetlinkMessage::DelQueueDiscipline(del), 0).await {
                return Err(explain(&format!("cannot remove the shaper on interface index {ifindex}"), &e));
            }
        }
    }
    for w in wanted.iter().filter(|w| w.slice.mbr_uplink_bps > 0) {
        let s = w.slice;
        if let Some(q) = roots.get(&w.ifindex)
            && q.header.handle.major != SHAPER_MAJOR
            && q.header.handle.major != 0
        {
            fail(
                &s.name,
                format!(
                    "interface {} already has a {} root qdisc (handle {:x}:) that Shopfloor did not create; \
                     the slice is not shaped — remove that qdisc or steer the slice through another interface",
                    s.interface,
                    kind(q),
                    q.header.handle.major
                ),
            );
            continue;
        }
        let mut msg = TcMessage::with_index(w.ifindex as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: SHAPER_MAJOR, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(tbf_options(s.mbr_uplink_bps)));
        if let Err(e) = send(handle, RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE).await {
            fail(&s.name, explain(&format!("cannot shape {} to {} bit/s", s.interface, s.mbr_uplink_bps), &e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_parameters_follow_the_rate() {
        use rtnetlink::packet_core::Nla;
        let opts = tbf_options(8_000_000);
        assert_eq!(opts.len(), 2, "no 64-bit rate below 4 GB/s: {opts:?}");
        let TcOption::Other(parms) = &opts[0] else { panic!("{opts:?}") };
        let mut buf = vec![0; parms.value_len()];
        parms.emit_value(&mut buf);
        assert_eq!(buf.len(), 36, "sizeof(struct tc_tbf_qopt)");
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 1_000_000, "bytes per second");
        assert_eq!(buf[1], TC_LINKLAYER_ETHERNET);
        let limit = u32::from_ne_bytes(buf[24..28].try_into().unwrap());
        assert_eq!(limit, 15_140 + 50_000, "burst plus 50 ms at the rate");
        assert_eq!(tbf_options(40_000_000_000).len(), 3, "a 64-bit rate above it");
    }
}
