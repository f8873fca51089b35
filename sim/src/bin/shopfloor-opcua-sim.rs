//! An OPC UA machine simulator for demos and tests.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use shopfloor_sim::opcua::{Machine, NAMESPACE, Options};

/// Serves one simulated packaging machine over OPC UA: variables Machine.Running (Boolean),
/// Speed (Double), Program (Int32), Mode (UInt16), Temperature (Double, follows the speed) and
/// JobCount (UInt32), and the methods StartJob(program: Int32, speed: Double) -> jobId: UInt32
/// and Stop(), all in the namespace urn:shopfloor:sim:machine. Endpoints: Basic256Sha256 and
/// Aes128Sha256RsaOaep with Sign and SignAndEncrypt, and None/None with --allow-none.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4840")]
    listen: SocketAddr,
    /// The server's certificate and key (created on first start) and its trust lists.
    #[arg(long, default_value = "opcua-sim-pki")]
    pki_dir: PathBuf,
    /// Also offer the unsecured endpoint (None/None).
    #[arg(long)]
    allow_none: bool,
    /// A user the server accepts besides anonymous sessions: NAME:PASSWORD.
    #[arg(long, value_name = "NAME:PASSWORD")]
    user: Option<String>,
    /// Append every write and method call to this file as JSON lines.
    #[arg(long)]
    write_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let user = match &args.user {
        Some(u) => {
            let (name, password) = u.split_once(':').context("--user NAME:PASSWORD")?;
            Some((name.to_owned(), password.to_owned()))
        }
        None => None,
    };
    let machine = Machine::start(Options {
        listen: args.listen,
        pki_dir: args.pki_dir.clone(),
        allow_none: args.allow_none,
        user,
        write_log: args.write_log.clone(),
    })
    .await
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "OPC UA simulator at {} (namespace {NAMESPACE}); its certificate is {}",
        machine.url,
        args.pki_dir.join("own/cert.der").display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
