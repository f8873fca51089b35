//! The dead-man switch's task: every poll interval (100 ms, down to 5 ms for a fail-safe at
//! machine speed), asks the fail-safes which are due (the controller
//! silent for their `after`) and engages each: recorded as engaged first (so commands that
//! write are refused and an action under way stops before its next write), then its safe values
//! written through the executor and read back, again and again until the device shows them,
//! each outcome recorded for the controller and the log.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use shopfloor_wire::{proto::ResultCode, transport};

use crate::{
    clock::Offset,
    commands::Executor,
    fail_safe::{Engagement, FailSafes, Policy},
};

/// Every datagram from the controller on `conn` is a sign of life: checked every 100 ms, in a
/// task of its own so that a long apply on the control stream never reads as silence.
///
/// A connection keeps the keep-alive it was made with, and a fail-safe armed during it may need
/// a shorter one: when nothing was heard for half the shortest fail-safe's listening interval,
/// the controller is made to answer (`transport::elicit_ack`), so a live link is never taken
/// for a lost one, whatever the connection's keep-alive.
pub(super) async fn hear(conn: quinn::Connection, fail_safes: Arc<FailSafes>) {
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut quiet_since = tokio::time::Instant::now();
    let mut grown = 0;
    loop {
        if fail_safes.idle() {
            fail_safes.until_armed().await;
            seen = conn.stats().udp_rx.datagrams;
            quiet_since = tokio::time::Instant::now();
        }
        // As often as the shortest fail-safe needs: 5 ms for one of 100 ms, 100 ms for seconds.
        tokio::time::sleep(fail_safes.poll_interval()).await;
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            quiet_since = tokio::time::Instant::now();
            fail_safes.heard();
        } else if quiet_since.elapsed() >= fail_safes.keep_alive(Duration::MAX) / 2 {
            transport::elicit_ack(&conn, &mut grown);
            quiet_since = tokio::time::Instant::now();
        }
    }
}

pub(super) async fn engage_when_silent(executor: Arc<Executor>, offset: Arc<std::sync::RwLock<Offset>>) {
    let reaching: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        executor.fail_safes().until_armed().await;
        tokio::time::sleep(executor.fail_safes().poll_interval()).await;
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
            let engagement = Engagement { since_unix_micros: since, message: why, reached: false };
            executor.fail_safes().engage(&equipment, engagement);
        }
        // Every engaged fail-safe whose safe state is not read back yet, just engaged or
        // restored so at start, gets one task that writes until it is.
        for (equipment, engagement, policy) in executor.fail_safes().unreached() {
            if !reaching.lock().unwrap_or_else(|p| p.into_inner()).insert(equipment.clone()) {
                continue;
            }
            let (executor, reaching) = (executor.clone(), reaching.clone());
            tokio::spawn(async move {
                reach_safe_state(&executor, &equipment, &engagement, &policy).await;
                reaching.lock().unwrap_or_else(|p| p.into_inner()).remove(&equipment);
            });
        }
    }
}

/// Writes `equipment`'s safe values until every one reads back from the device, with a
/// backoff from 100 ms to 5 s between attempts; stops early when the fail-safe is lifted. Each
/// attempt is journalled under its own id and its outcome recorded: the status says "safe state
/// NOT reached" until the device shows it.
async fn reach_safe_state(executor: &Executor, equipment: &str, engagement: &Engagement, policy: &Policy) {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1u32.. {
        if executor.fail_safes().holding(equipment).is_none_or(|e| e.since_unix_micros != engagement.since_unix_micros)
        {
            return;
        }
        let id = format!("fail-safe/{equipment}/{}/{attempt}", engagement.since_unix_micros);
        let result = executor.write_safe_values(equipment, &policy.values, &id).await;
        let why = engagement.message.split(": safe state").next().unwrap_or_default();
        let reached = result.code == ResultCode::Ok as i32;
        if reached {
            let message = format!("{why}: safe state reached: {}", result.message);
            tracing::warn!(equipment, attempt, "fail-safe {message}");
            executor.fail_safes().attempted(equipment, true, message);
            return;
        }
        let message = format!(
            "{why}: safe state NOT reached ({}); writing again in {:.1} s (attempt {attempt})",
            result.message,
            backoff.as_secs_f64()
        );
        tracing::error!(equipment, attempt, "fail-safe {message}");
        executor.fail_safes().attempted(equipment, false, message);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
