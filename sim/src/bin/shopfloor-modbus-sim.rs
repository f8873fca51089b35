//! A Modbus TCP device simulator for demos and tests.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use shopfloor_sim::modbus::{Device, Mirror, Simulator};

/// Serves one simulated Modbus TCP device (coils, discrete inputs, input and holding registers,
/// all zero at start) and optionally logs every write as a JSON line.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1502")]
    listen: SocketAddr,
    /// Append every write to this file as JSON lines.
    #[arg(long)]
    write_log: Option<PathBuf>,
    /// Copy holding register H into input register I with a lag, like a process value
    /// following its setpoint: `H:I` (16-bit, lagged) or `H:I:2` (32-bit, copied).
    #[arg(long = "mirror", value_name = "H:I[:WIDTH]")]
    mirrors: Vec<String>,
    /// Initial value of a discrete input or input register: `discrete:ADDR=0|1` or `input:ADDR=WORD`.
    #[arg(long = "set", value_name = "TABLE:ADDR=VALUE")]
    sets: Vec<String>,
    /// Answer every request this late, like a slow PLC on a busy bus (e.g. `500ms`).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
    response_delay: Option<std::time::Duration>,
}

fn parse_delay(s: &str) -> Result<std::time::Duration, String> {
    let ms = s.strip_suffix("ms").map(str::parse::<u64>);
    let secs = s.strip_suffix('s').map(str::parse::<u64>);
    match (ms, secs) {
        (Some(Ok(ms)), _) => Ok(std::time::Duration::from_millis(ms)),
        (_, Some(Ok(s))) => Ok(std::time::Duration::from_secs(s)),
        _ => Err(format!("`{s}` is not a delay like 500ms or 2s")),
    }
}

fn parse_mirror(s: &str) -> anyhow::Result<Mirror> {
    let parts: Vec<&str> = s.split(':').collect();
    let n = |i: usize| -> anyhow::Result<u16> {
        parts.get(i).context("expected H:I[:WIDTH]")?.parse().context("not a register number")
    };
    Ok(Mirror { holding: n(0)?, input: n(1)?, width: if parts.len() > 2 { n(2)? } else { 1 }, factor: 0.3 })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = match &args.write_log {
        Some(p) => Device::with_log(p.clone()).with_context(|| format!("cannot open {}", p.display()))?,
        None => Device::default(),
    };
    for s in &args.sets {
        let (table, rest) = s.split_once(':').context("--set TABLE:ADDR=VALUE")?;
        let (addr, value) = rest.split_once('=').context("--set TABLE:ADDR=VALUE")?;
        let (addr, value): (u16, u16) = (addr.parse()?, value.parse()?);
        let mut regs = device.regs.lock().unwrap_or_else(|p| p.into_inner());
        match table {
            "discrete" => drop(regs.discrete.insert(addr, value != 0)),
            "input" => drop(regs.input.insert(addr, value)),
            other => anyhow::bail!("--set: unknown table `{other}` (discrete or input)"),
        }
    }
    if let Some(delay) = args.response_delay {
        device.regs.lock().unwrap_or_else(|p| p.into_inner()).response_delay = delay;
    }
    let mirrors = args.mirrors.iter().map(|m| parse_mirror(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let sim = Simulator::start(args.listen, device, mirrors)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("modbus simulator listening on {}", sim.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
