//! `tdmq-backup-ingester --config FILE`: flags → config → logging → `ingester::run`, started,
//! logged and failed the way every daemon is (`edge`).

use anyhow::Context as _;
use clap::Parser as _;
use ingester::config::{Args, IngesterConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    edge::fatal::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let config = IngesterConfig::from_args(Args::parse()).context("configuration")?;
    edge::logging::init(config.daemon.log_format, ingester::LOG_FILTER);
    let listener = edge::settings::bind_listen(config.daemon.listen).await?;
    ingester::run(config, listener, edge::shutdown::signal_received()).await
}
