//! `examples/ingester.toml` is the one example of the ingester's config: it must load through the
//! real loader, and it must name every key the ingester knows (set or commented out), so that a
//! new key cannot be added without documenting it there.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{CommandFactory as _, Parser as _};
use ingester::config::{Args, IngesterConfig};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ingester.toml")
}

/// The config keys: every flag but `--config`, `--help` and `--version`, with `-` as `_`.
fn config_keys() -> BTreeSet<String> {
    Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| !matches!(*long, "config" | "help" | "version"))
        .map(|long| long.replace('-', "_"))
        .collect()
}

/// Keys the file sets or shows commented out (`key = ...` or `# key = ...` at a line's start).
fn keys_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix('#').map_or(line, str::trim_start);
            let (key, _) = line.split_once(" = ")?;
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
                .then(|| key.to_string())
        })
        .collect()
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
    let known = config_keys();
    let shown = keys_in(&text);
    let missing: Vec<_> = known.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(&known).collect();
    assert!(
        missing.is_empty(),
        "keys missing from examples/ingester.toml: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "examples/ingester.toml shows keys the ingester does not know: {unknown:?}"
    );
    Ok(())
}
