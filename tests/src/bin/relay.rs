//! `tdmq-backup-relay`: the test relay as a process, for scripts and the demo (see
//! `harness::relay` for what it rewrites and why).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use harness::relay::FlowAccounting;
use harness::Relay;

/// Makes pulsar-lite readable by pulsar-rs clients (adds the optional payload checksum and
/// points topic lookups at the relay).
#[derive(Debug, Parser)]
#[command(name = "tdmq-backup-relay", version)]
struct Args {
    /// Address to accept Pulsar clients on.
    #[arg(long, default_value = "127.0.0.1:6651")]
    listen: SocketAddr,
    /// The pulsar-lite broker to forward to.
    #[arg(long, default_value = "127.0.0.1:6650")]
    broker: SocketAddr,
    /// How flow permits reach pulsar-lite: `per-message` counts them as an Apache Pulsar broker
    /// does; `passthrough` leaves pulsar-lite's own per-entry count.
    #[arg(long, value_enum, default_value_t = Permits::PerMessage)]
    permits: Permits,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Permits {
    PerMessage,
    Passthrough,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pulsar=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let accounting = match args.permits {
        Permits::PerMessage => FlowAccounting::PerMessage,
        Permits::Passthrough => FlowAccounting::Passthrough,
    };
    let relay = Relay::start_with_accounting(args.listen, args.broker, accounting)
        .with_context(|| format!("starting the relay on {}", args.listen))?;
    tracing::info!(url = %relay.url(), broker = %args.broker, "relay running");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result.context("waiting for Ctrl-C")?;
                break;
            }
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                if relay.is_finished() {
                    anyhow::bail!("the relay stopped unexpectedly");
                }
            }
        }
    }
    tracing::info!("relay stopping");
    drop(relay);
    Ok(())
}
