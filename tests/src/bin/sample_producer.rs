//! `tdmq-backup-sample-producer`: produces the harness's deterministic sample messages, for
//! scripts and the demo (the e2e tests call `harness::produce` directly).

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tdmq-backup-sample-producer", version)]
struct Args {
    /// Broker URL (for pulsar-lite, the relay's URL).
    #[arg(long, default_value = "pulsar://127.0.0.1:6651")]
    url: String,
    /// Topic to produce to: persistent://tenant/namespace/topic, or a short name that means
    /// persistent://public/default/NAME, as in a rule.
    #[arg(long)]
    topic: String,
    /// Number of messages.
    #[arg(long)]
    count: usize,
    /// Seed of the sample sequence (same seed, same messages).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send messages one by one instead of in batches.
    #[arg(long)]
    no_batching: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pulsar=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // The same completion a rule applies, so `--topic orders` here is the topic a rule with
    // `--topic orders` reads (the broker alone would take the short name literally).
    let topic = proto::types::TopicName::parse(&args.topic)
        .map_err(anyhow::Error::msg)?
        .full_name();
    let messages = harness::sample_messages(args.count, args.seed);
    harness::produce(&args.url, &topic, &messages, !args.no_batching)
        .await
        .with_context(|| format!("producing to {topic}"))?;
    println!("produced {} messages to {topic}", args.count);
    Ok(())
}
