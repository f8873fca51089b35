//! The dead-man switch's task: every 100 ms, asks the fail-safes which are due (the controller
//! silent for their `after`) and engages each: recorded as engaged first (so commands that
//! write are refused and an action under way stops before its next write), then its safe values
//! written through the executor, then the outcome recorded for the controller and the log.

use std::{sync::Arc, time::Duration};

use crate::{
    clock::Offset,
    commands::Executor,
    fail_safe::{Engagement, FailSafes},
};

/// Every datagram from the controller on `conn` is a sign of life: checked every 100 ms, in a
/// task of its own so that a long apply on the control stream never reads as silence.
pub(super) async fn hear(conn: quinn::Connection, fail_safes: Arc<FailSafes>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut seen = conn.stats().udp_rx.datagrams;
    loop {
        if fail_safes.idle() {
            fail_safes.until_armed().await;
            seen = conn.stats().udp_rx.datagrams;
        }
        tick.tick().await;
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            fail_safes.heard();
        }
    }
}

pub(super) async fn engage_when_silent(executor: Arc<Executor>, offset: Arc<std::sync::RwLock<Offset>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        executor.fail_safes().until_armed().await;
        tick.tick().await;
        let (due, silence) = executor.fail_safes().due();
        for (equipment, policy) in due {
            let since =
                offset.read().unwrap_or_else(|p| p.into_inner()).to_controller(executor.wall_clock().now_micros());
            let why = format!(
                "engaged at {} after {:.1} s without a sign of the controller (failSafe.after {:?}{})",
                jiff::Timestamp::from_microsecond(since).map_or_else(|_| since.to_string(), |t| t.to_string()),
                silence.as_secs_f64(),
                policy.after,
                if policy.required_by_envelope { ", as the plant's envelope requires" } else { "" }
            );
            executor.fail_safes().engage(&equipment, Engagement { since_unix_micros: since, message: why.clone() });
            let executor = executor.clone();
            tokio::spawn(async move {
                let id = format!("fail-safe/{equipment}/{since}");
                let result = executor.write_safe_values(&equipment, &policy.values, &id).await;
                let message = format!("{why}: {}", result.message);
                tracing::warn!(equipment = %equipment, "fail-safe {message}");
                executor.fail_safes().engage(&equipment, Engagement { since_unix_micros: since, message });
            });
        }
    }
}
