//! `examples/uploader.toml` (COS) and `examples/uploader-s3.toml` (other S3 stores) are the
//! examples of the uploader's config: each must load through the real loader, and each must name
//! every key the uploader knows (set or commented out), so that a new key cannot be added without
//! documenting it there.

#[path = "../../tests/src/example_config.rs"]
mod example_config;

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser as _};
use uploader::config::{Args, Credentials, UploaderConfig};

const EXAMPLES: [&str; 2] = ["uploader.toml", "uploader-s3.toml"];

fn read_example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(name: &str) -> UploaderConfig {
    let args = Args::try_parse_from(["tdmq-backup-uploader"]).expect("no flags");
    // The real loader minus the process environment: credentials never come from a file.
    UploaderConfig::build(args, Some(&read_example(name)), Credentials::DefaultChain)
        .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

#[test]
fn the_examples_load_through_the_real_loader() {
    for name in EXAMPLES {
        let c = load(name);
        assert_eq!(c.daemon.listen.to_string(), "127.0.0.1:7602", "{name}");
        assert_eq!(c.ingester(), "http://127.0.0.1:7601", "{name}");
        assert!(c.daemon.auth_token_file.is_some(), "{name}");
        assert_eq!(
            c.daemon.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:7612"),
            "{name}"
        );
    }
    let cos = load("uploader.toml");
    assert!(
        cos.endpoint.is_none(),
        "the COS example lets each rule's region pick its endpoint"
    );
    assert!(!cos.path_style);
    let s3 = load("uploader-s3.toml");
    assert!(s3.endpoint.is_some());
    assert!(s3.path_style);
    assert_eq!(s3.region.as_deref(), Some("us-east-1"));
}

#[test]
fn the_examples_name_every_key_and_no_other() {
    for name in EXAMPLES {
        example_config::assert_names_every_key(
            name,
            "uploader",
            &read_example(name),
            &Args::command(),
        );
    }
}

#[test]
fn the_kubernetes_configmaps_uploader_config_loads_through_the_real_loader() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/tdmq-backup.yaml");
    let manifest =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = example_config::configmap_entry(&manifest, "uploader.toml");
    let args = Args::try_parse_from(["tdmq-backup-uploader"]).expect("no flags");
    let c = UploaderConfig::build(args, Some(&text), Credentials::DefaultChain)
        .unwrap_or_else(|e| panic!("the ConfigMap's uploader.toml: {e}"));
    // The ingester in the same pod; the sealed files on the shared volume, where it mounts them.
    assert_eq!(c.ingester(), "http://127.0.0.1:7601");
    assert_eq!(c.daemon.listen.to_string(), "0.0.0.0:7602");
    assert!(c.daemon.auth_token_file.is_some());
    assert_eq!(
        c.ingester_data_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/tdmq-backup/ingester"))
    );
}
