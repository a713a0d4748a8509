//! `tdmq-backup-uploader --config FILE`: flags → config → logging → `uploader::run`, started,
//! logged and failed the way every daemon is (`edge`).

use anyhow::Context as _;
use clap::Parser as _;
use uploader::config::{Args, UploaderConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    edge::fatal::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let config = UploaderConfig::load(Args::parse()).context("configuration")?;
    edge::logging::init(config.daemon.log_format, uploader::LOG_FILTER);
    let listener = edge::settings::bind_listen(config.daemon.listen).await?;
    uploader::run(config, listener, edge::shutdown::signal_received()).await
}
