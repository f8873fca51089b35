//! `kubectl shopfloor exec`: create a ControlCommand, wait for it, print the result.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::Context as _;
use k8s_openapi::jiff::Timestamp;
use shopfloor_api::{
    ControlCommand, ControlCommandSpec, LocalRef, Value,
    control_command::{CommandPhase, ParameterValue, WhenOffline},
};

use crate::backend::Backend;

/// Exit codes: the outcome of the command, so scripts can branch on it.
pub mod exit {
    pub const SUCCEEDED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REJECTED: u8 = 3;
    pub const EXPIRED: u8 = 4;
    pub const STILL_RUNNING: u8 = 5;
}

/// `key=value` into a parameter: booleans and numbers are typed, anything else is a name.
pub fn parse_param(kv: &str) -> anyhow::Result<(String, ParameterValue)> {
    let (k, v) = kv.split_once('=').with_context(|| format!("`{kv}` is not key=value"))?;
    let value = if let Ok(b) = v.parse::<bool>() {
        ParameterValue::Scalar(Value::Bool(b))
    } else if let Ok(i) = v.parse::<i64>() {
        ParameterValue::Scalar(Value::Int(i))
    } else if let Ok(f) = v.parse::<f64>() {
        ParameterValue::Scalar(Value::Float(f))
    } else {
        ParameterValue::Name(v.to_owned())
    };
    Ok((k.to_owned(), value))
}

pub struct ExecArgs {
    pub equipment: String,
    pub action: String,
    pub params: Vec<String>,
    pub dry_run: bool,
    pub timeout: Duration,
    pub wait: bool,
    pub reject_offline: bool,
    pub allow_slow_link: bool,
}

/// A command name unique enough for a person typing commands: equipment, action and time.
fn command_name(equipment: &str, action: &str) -> String {
    let now = Timestamp::now();
    let base: String = format!("{equipment}-{action}").chars().take(40).collect();
    format!("{}-{}{:03}", base.trim_end_matches('-'), now.as_second() % 100_000, now.subsec_millisecond())
}

pub async fn run(backend: &Backend, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut parameters = BTreeMap::new();
    for p in &args.params {
        let (k, v) = parse_param(p)?;
        parameters.insert(k, v);
    }
    let name = command_name(&args.equipment, &args.action);
    let mut cmd = ControlCommand::new(
        &name,
        ControlCommandSpec {
            equipment_ref: LocalRef::new(&args.equipment),
            action: args.action.clone(),
            parameters,
            timeout: args.timeout.into(),
            when_offline: if args.reject_offline { WhenOffline::Reject } else { WhenOffline::Queue },
            preconditions: vec![],
            dry_run: args.dry_run,
            require_link_within_budget: args.allow_slow_link.then_some(false),
            ttl_seconds_after_finished: Some(3600),
        },
    );
    cmd.metadata.namespace = Some(backend.namespace().to_owned());
    if let Err(invalid) = shopfloor_api::Validate::validate(&cmd) {
        eprintln!("{invalid}");
        return Ok(ExitCode::from(exit::USAGE));
    }
    backend.create_command(&cmd).await.with_context(|| format!("cannot create ControlCommand {name}"))?;
    println!("controlcommand/{name} created");
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    // The controller expires the command at its deadline; allow a little beyond for the result.
    let give_up = std::time::Instant::now() + args.timeout + Duration::from_secs(10);
    loop {
        if let Some(c) = backend.command(&name).await?
            && let Some(status) = c.status.as_ref()
            && status.phase.is_some_and(CommandPhase::is_terminal)
        {
            print!("{}", describe(&c));
            let code = match status.phase {
                Some(CommandPhase::Succeeded) => exit::SUCCEEDED,
                Some(CommandPhase::Rejected) => exit::REJECTED,
                Some(CommandPhase::Expired) => exit::EXPIRED,
                _ => exit::FAILED,
            };
            return Ok(ExitCode::from(code));
        }
        if std::time::Instant::now() > give_up {
            eprintln!("ControlCommand {name} has no result yet; follow it with `kubectl get controlcommand {name} -w`");
            return Ok(ExitCode::from(exit::STILL_RUNNING));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The result and latency breakdown of a finished command.
pub fn describe(c: &ControlCommand) -> String {
    let st = c.status.clone().unwrap_or_default();
    let result = st.result.clone();
    let ms = |v: Option<i64>| v.map(|us| format!("{:.3} ms", us as f64 / 1000.0)).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    out.push_str(&format!(
        "phase:     {}\nresult:    {}{}\n",
        st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
        result.as_ref().map(|r| format!("{:?}", r.code)).unwrap_or_default(),
        result.as_ref().filter(|r| !r.message.is_empty()).map(|r| format!(" — {}", r.message)).unwrap_or_default()
    ));
    if let Some(r) = &result
        && !r.outputs.is_empty()
    {
        let outs: Vec<String> = r.outputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("outputs:   {}\n", outs.join(" ")));
    }
    out.push_str(&format!(
        "latency:   queue {}, network {}, execution {}, total {}\nattempts:  {}\ntrace id:  {}\n",
        ms(st.latency.queue_micros),
        ms(st.latency.network_micros),
        ms(st.latency.execution_micros),
        ms(st.latency.total_micros),
        st.attempts,
        st.trace_id.unwrap_or_else(|| "-".into())
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_typed_like_yaml_scalars() {
        assert_eq!(parse_param("speed=1.5").expect("ok").1, ParameterValue::Scalar(Value::Float(1.5)));
        assert_eq!(parse_param("program=7").expect("ok").1, ParameterValue::Scalar(Value::Int(7)));
        assert_eq!(parse_param("on=true").expect("ok").1, ParameterValue::Scalar(Value::Bool(true)));
        assert_eq!(parse_param("property=belt-speed").expect("ok").1, ParameterValue::Name("belt-speed".into()));
        assert!(parse_param("speed").is_err());
    }
}
