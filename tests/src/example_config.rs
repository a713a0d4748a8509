//! Checks an example config file against its daemon's flags: it must show every key the daemon
//! knows (set or commented out), and no other, so that a new key cannot be added without
//! documenting it there. The ingester's and the uploader's `tests/example_configs.rs` include
//! this file by path, so that neither crate depends on the harness for it.

use std::collections::BTreeSet;

/// The config keys of a daemon whose flags are `command`: every long flag but `--config`,
/// `--help` and `--version`, with `-` as `_`.
pub fn config_keys(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| !matches!(*long, "config" | "help" | "version"))
        .map(|long| long.replace('-', "_"))
        .collect()
}

/// Keys the file sets or shows commented out (`key = ...` or `# key = ...` at a line's start).
pub fn keys_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix('#').map_or(line, str::trim_start);
            let (key, _) = line.split_once(" = ")?;
            let key = key.trim_end();
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
                .then(|| key.to_string())
        })
        .collect()
}

/// Panics unless `text`, the example `examples/{file}` of `daemon`, shows exactly the keys of
/// `command`.
pub fn assert_names_every_key(file: &str, daemon: &str, text: &str, command: &clap::Command) {
    let known = config_keys(command);
    let shown = keys_in(text);
    let missing: Vec<_> = known.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(&known).collect();
    assert!(
        missing.is_empty(),
        "keys missing from examples/{file}: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "examples/{file} shows keys the {daemon} does not know: {unknown:?}"
    );
}

/// The text of `entry` (a `NAME: |` block) in the ConfigMap of the Kubernetes manifest `yaml`,
/// without its indentation; panics when the manifest has no such entry.
pub fn configmap_entry(yaml: &str, entry: &str) -> String {
    let header = format!("{entry}: |");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != header);
    let Some(first) = lines.next() else {
        panic!("the Kubernetes manifest has no ConfigMap entry {entry}");
    };
    let indent = first.len() - first.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}
