//! `examples/ingester.toml` is the one example of the ingester's config: it must load through the
//! real loader, and it must name every key the ingester knows (set or commented out), so that a
//! new key cannot be added without documenting it there.

#[path = "../../tests/src/example_config.rs"]
mod example_config;

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser as _};
use ingester::config::{Args, IngesterConfig};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ingester.toml")
}

#[test]
fn the_example_loads_through_the_real_loader() -> anyhow::Result<()> {
    let path = example();
    let args = Args::try_parse_from(["tdmq-backup-ingester", "--config", &path.to_string_lossy()])?;
    let config = IngesterConfig::from_args(args)?;
    assert_eq!(config.daemon.listen.to_string(), "127.0.0.1:7601");
    assert_eq!(
        config.data_dir,
        PathBuf::from("/var/lib/tdmq-backup/ingester")
    );
    assert!(config.daemon.auth_token_file.is_some());
    Ok(())
}

#[test]
fn the_example_names_every_key_and_no_other() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(example())?;
    example_config::assert_names_every_key("ingester.toml", "ingester", &text, &Args::command());
    Ok(())
}

#[test]
fn the_kubernetes_configmaps_ingester_config_loads_through_the_real_loader() -> anyhow::Result<()> {
    let manifest =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/tdmq-backup.yaml");
    let text =
        example_config::configmap_entry(&std::fs::read_to_string(manifest)?, "ingester.toml");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ingester.toml");
    std::fs::write(&path, &text)?;
    let args = Args::try_parse_from(["tdmq-backup-ingester", "--config", &path.to_string_lossy()])?;
    let config = IngesterConfig::from_args(args)?;
    // A pod's loopback is the pod alone: ctl and Prometheus come through the Services.
    assert_eq!(config.daemon.listen.to_string(), "0.0.0.0:7601");
    assert_eq!(
        config
            .daemon
            .metrics_listen
            .map(|a| a.to_string())
            .as_deref(),
        Some("0.0.0.0:7611")
    );
    assert_eq!(
        config.data_dir,
        PathBuf::from("/var/lib/tdmq-backup/ingester")
    );
    assert!(config.daemon.auth_token_file.is_some());
    Ok(())
}
