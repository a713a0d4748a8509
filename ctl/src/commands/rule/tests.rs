use std::path::{Path, PathBuf};

use clap::Parser as _;

use super::waiting::drain_message;
use super::*;
use crate::cli::{Cli, Command, OutputFormat};

const BASE: [&str; 13] = [
    "tdmq-backup",
    "rule",
    "create",
    "orders",
    "--service-url",
    "pulsar://10.0.0.5:6650",
    "--topic",
    "orders",
    "--subscription",
    "backup",
    "--bucket",
    "backup-1250000000",
    "--region",
];

fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
    let mut args: Vec<&str> = BASE.to_vec();
    args.push("ap-guangzhou");
    args.extend_from_slice(extra);
    Cli::try_parse_from(args)
}

fn create_args(cli: Cli) -> CreateArgs {
    match cli.command {
        Command::Rule(RuleCommand::Create(args)) => args,
        other => panic!("not rule create: {other:?}"),
    }
}

#[test]
fn cli_is_well_formed() {
    use clap::CommandFactory as _;
    Cli::command().debug_assert();
}

#[test]
fn token_file_after_rule_create_is_the_pulsar_token() {
    let cli = parse(&["--token-file", "/run/pulsar.jwt"]).expect("parses");
    assert_eq!(cli.token_file, None);
    let args = create_args(cli);
    assert_eq!(args.spec.token_file, Some(PathBuf::from("/run/pulsar.jwt")));
}

#[test]
fn token_file_before_the_command_is_the_control_plane_token() {
    let cli = Cli::try_parse_from(["tdmq-backup", "--token-file", "/etc/ctl.tok", "status"])
        .expect("parses");
    assert_eq!(cli.token_file, Some(PathBuf::from("/etc/ctl.tok")));
    assert!(matches!(
        cli.command,
        Command::Status {
            name: None,
            watch: None
        }
    ));

    // Both at once: each reaches its own.
    let mut args = vec!["tdmq-backup", "--token-file", "/etc/ctl.tok"];
    args.extend_from_slice(&BASE[1..]);
    args.extend_from_slice(&["ap-guangzhou", "--token-file", "/run/pulsar.jwt"]);
    let cli = Cli::try_parse_from(args).expect("parses");
    assert_eq!(cli.token_file, Some(PathBuf::from("/etc/ctl.tok")));
    assert_eq!(
        create_args(cli).spec.token_file,
        Some(PathBuf::from("/run/pulsar.jwt"))
    );

    // The control-plane flag is not taken after `status`.
    assert!(Cli::try_parse_from(["tdmq-backup", "status", "--token-file", "x"]).is_err());
}

#[test]
fn token_file_and_token_env_conflict() {
    let err = parse(&["--token-file", "/a", "--token-env", "PULSAR_TOKEN"]).expect_err("conflict");
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[test]
fn several_ingesters_repeated_or_as_a_list_before_or_after_the_command() {
    let cli = Cli::try_parse_from([
        "tdmq-backup",
        "--ingester",
        "http://a:1",
        "--ingester",
        "http://b:2,http://c:3",
        "status",
    ])
    .expect("parses");
    // Listed, not "the last one wins" as for the other global options.
    assert_eq!(cli.ingester, ["http://a:1", "http://b:2", "http://c:3"]);
    let cli = Cli::try_parse_from([
        "tdmq-backup",
        "status",
        "--ingester",
        "http://a:1",
        "--ingester",
        "http://b:2,http://c:3",
    ])
    .expect("parses");
    assert_eq!(cli.ingester, ["http://a:1", "http://b:2", "http://c:3"]);
}

#[test]
fn globals_and_defaults() {
    let cli = Cli::try_parse_from(["tdmq-backup", "rule", "list"]).expect("parses");
    // Defaults unless the environment overrides them (CI may set these).
    if std::env::var_os("TDMQ_BACKUP_INGESTER").is_none() {
        assert_eq!(cli.ingester, ["http://127.0.0.1:7601"]);
    }
    if std::env::var_os("TDMQ_BACKUP_UPLOADER").is_none() {
        assert_eq!(cli.uploader, "http://127.0.0.1:7602");
    }
    assert_eq!(cli.output, OutputFormat::Table);
    let cli = Cli::try_parse_from([
        "tdmq-backup",
        "--ingester",
        "http://h:1",
        "--output",
        "json",
        "status",
        "orders",
    ])
    .expect("parses");
    assert_eq!(cli.ingester, ["http://h:1"]);
    assert_eq!(cli.output, OutputFormat::Json);
    // --output also works after the command.
    let cli = Cli::try_parse_from(["tdmq-backup", "segments", "orders", "--output", "json"])
        .expect("parses");
    assert_eq!(cli.output, OutputFormat::Json);
    assert!(Cli::try_parse_from(["tdmq-backup", "--output", "yaml", "status"]).is_err());
}

#[test]
fn sizes_and_durations_pass_through_as_typed() {
    let cli = parse(&[
        "--window",
        "30s",
        "--max-messages",
        "100",
        "--max-bytes",
        "64MiB",
        "--prefix",
        "logs/",
        "--start",
        "latest",
        "--subscription-type",
        "exclusive",
        "--compression",
        "none",
        "--endpoint",
        "http://127.0.0.1:9000",
        "--cluster",
        "c1",
        "--role",
        "r1",
    ])
    .expect("parses");
    let (spec, token) = create_spec(create_args(cli)).expect("valid");
    assert_eq!(token, None);
    let p = spec.into_spec(None);
    assert_eq!(p.name, "orders");
    assert_eq!(p.window.as_deref(), Some("30s"));
    assert_eq!(p.max_messages, Some(100));
    assert_eq!(p.max_bytes.as_deref(), Some("64MiB"));
    assert_eq!(p.prefix.as_deref(), Some("logs/"));
    assert_eq!(p.start.as_deref(), Some("latest"));
    assert_eq!(p.subscription_type.as_deref(), Some("exclusive"));
    assert_eq!(p.compression.as_deref(), Some("none"));
    assert_eq!(p.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(p.cluster.as_deref(), Some("c1"));
    assert_eq!(p.role.as_deref(), Some("r1"));
    // Topic goes as typed; the ingester completes it.
    assert_eq!(p.topic.as_deref(), Some("orders"));
    assert!(parse(&["--max-messages", "lots"]).is_err());
}

#[test]
fn analyst_options_reach_the_spec() {
    let cli = parse(&[
        "--compression",
        "zstd",
        "--compression-level",
        "9",
        "--layout",
        "hive",
    ])
    .expect("parses");
    let (spec, _) = create_spec(create_args(cli)).expect("valid");
    let p = spec.into_spec(None);
    assert_eq!(
        (
            p.compression.as_deref(),
            p.compression_level,
            p.layout.as_deref()
        ),
        (Some("zstd"), Some(9), Some("hive"))
    );
    assert!(parse(&["--compression-level", "high"]).is_err());
}

#[test]
fn bad_prefix_is_refused_client_side_with_its_message() {
    let cli = parse(&["--prefix", "logs"]).expect("parses");
    let err = create_spec(create_args(cli)).expect_err("refused");
    assert_eq!(err.to_string(), r#"prefix "logs" must end with "/""#);
}

#[test]
fn missing_required_field_is_named() {
    let cli = Cli::try_parse_from(["tdmq-backup", "rule", "create", "orders"]).expect("parses");
    let err = create_spec(create_args(cli)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "service_url, topic, subscription, bucket and region are required"
    );
    // No NAME and no --from-file: a usage error.
    assert!(Cli::try_parse_from(["tdmq-backup", "rule", "create"]).is_err());
}

#[test]
fn token_sources_are_read_and_errors_never_show_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = dir.path().join("pulsar.jwt");
    std::fs::write(&tok, "  eyJ.secret \n").expect("write");
    let tok_s = tok.to_string_lossy().to_string();
    let cli = parse(&["--token-file", &tok_s]).expect("parses");
    let (_, token) = create_spec(create_args(cli)).expect("valid");
    assert_eq!(token.as_deref(), Some("eyJ.secret"));

    let empty = dir.path().join("empty.jwt");
    std::fs::write(&empty, "\n").expect("write");
    let empty_s = empty.to_string_lossy().to_string();
    let cli = parse(&["--token-file", &empty_s]).expect("parses");
    let err = create_spec(create_args(cli)).expect_err("empty");
    assert_eq!(err.to_string(), format!("--token-file {empty_s} is empty"));

    let cli = parse(&["--token-env", "TDMQ_BACKUP_CTL_TEST_SURELY_UNSET"]).expect("parses");
    let err = create_spec(create_args(cli)).expect_err("unset");
    assert_eq!(
        err.to_string(),
        "--token-env TDMQ_BACKUP_CTL_TEST_SURELY_UNSET: the environment variable is not set"
    );
}

const RULE_TOML: &str = r#"
name = "orders"
service_url = "pulsar://10.0.0.5:6650"
topic = "persistent://public/default/orders"
subscription = "backup"
bucket = "backup-1250000000"
region = "ap-guangzhou"
prefix = "logs/"
window = "10m"
max_messages = 2000
max_bytes = "64MiB"
token_file = "pulsar.jwt"
"#;

#[test]
fn from_file_reads_the_rule_and_the_token_file_next_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = dir.path().join("rule.toml");
    std::fs::write(&rule, RULE_TOML).expect("write");
    std::fs::write(dir.path().join("pulsar.jwt"), "tok-123\n").expect("write");
    let rule_s = rule.to_string_lossy().to_string();
    let cli = Cli::try_parse_from(["tdmq-backup", "rule", "create", "--from-file", &rule_s])
        .expect("parses");
    let (spec, token) = create_spec(create_args(cli)).expect("valid");
    assert_eq!(spec.name.as_deref(), Some("orders"));
    assert_eq!(spec.window.as_deref(), Some("10m"));
    assert_eq!(spec.max_messages, Some(2000));
    assert_eq!(spec.max_bytes.as_deref(), Some("64MiB"));
    assert_eq!(token.as_deref(), Some("tok-123"));

    // Flags replace the file's values.
    let cli = Cli::try_parse_from([
        "tdmq-backup",
        "rule",
        "create",
        "--from-file",
        &rule_s,
        "--window",
        "1m",
    ])
    .expect("parses");
    let (spec, _) = create_spec(create_args(cli)).expect("valid");
    assert_eq!(spec.window.as_deref(), Some("1m"));
}

#[test]
fn drain_progress_counts_segments_by_state() {
    let seg = |state: &str| proto::v1::SegmentInfo {
        state: state.into(),
        ..proto::v1::SegmentInfo::default()
    };
    assert_eq!(
        drain_message("orders", &[seg("sealed"), seg("stored"), seg("sealed")]),
        "draining orders: 3 segments left (2 sealed, 1 stored)"
    );
    assert_eq!(
        drain_message("orders", &[seg("open")]),
        "draining orders: 1 segment left (1 open)"
    );
    assert_eq!(
        drain_message("orders", &[]),
        "draining orders: nothing left, deleting"
    );
}

#[test]
fn from_file_type_errors_name_the_key() {
    let text = RULE_TOML.replace("max_messages = 2000", "max_messages = \"2000\"");
    assert_ne!(
        text, RULE_TOML,
        "the sample rule file sets max_messages = 2000"
    );
    let err = parse_rule_file(&text, Path::new("rule.toml")).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with("rule.toml: max_messages: invalid type"),
        "{msg}"
    );
}

#[test]
fn from_file_refuses_unknown_keys_by_name() {
    let text = format!("{RULE_TOML}\nwindw = \"5m\"\n");
    let err = parse_rule_file(&text, Path::new("rule.toml")).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.starts_with("rule.toml: unknown field `windw`"), "{msg}");
    assert!(!msg.contains('\n'));

    let err = parse_rule_file("token = \"abc\"\n", Path::new("rule.toml")).expect_err("no");
    assert!(!err.to_string().contains("abc"));
    assert!(err.to_string().contains("token_file or token_env"));

    let err = parse_rule_file("name = \n", Path::new("rule.toml")).expect_err("syntax");
    assert!(err.to_string().starts_with("rule.toml: line 1:"), "{err}");
    assert!(!err.to_string().contains('\n'));

    let err =
        parse_rule_file("max_messages = \"many\"\n", Path::new("rule.toml")).expect_err("type");
    assert!(err.to_string().starts_with("rule.toml: "), "{err}");

    let (spec, token) =
        parse_rule_file("max_bytes = 1000\ntoken_env = \"T\"\n", Path::new("r.toml")).expect("ok");
    assert_eq!(spec.max_bytes.as_deref(), Some("1000"));
    assert!(matches!(token, Some(TokenSource::Env { var, .. }) if var == "T"));
}

#[test]
fn from_file_prefix_error_is_the_validation_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = dir.path().join("rule.toml");
    let text = RULE_TOML
        .replace("prefix = \"logs/\"", "prefix = \"logs\"")
        .replace("token_file = \"pulsar.jwt\"\n", "");
    std::fs::write(&rule, text).expect("write");
    let rule_s = rule.to_string_lossy().to_string();
    let cli = Cli::try_parse_from(["tdmq-backup", "rule", "create", "--from-file", &rule_s])
        .expect("parses");
    let err = create_spec(create_args(cli)).expect_err("refused");
    assert_eq!(err.to_string(), r#"prefix "logs" must end with "/""#);
}

fn edit_args(args: &[&str]) -> EditArgs {
    let mut all = vec!["tdmq-backup", "rule", "edit"];
    all.extend_from_slice(args);
    match Cli::try_parse_from(all).expect("parses").command {
        Command::Rule(RuleCommand::Edit(args)) => args,
        other => panic!("not rule edit: {other:?}"),
    }
}

#[test]
fn edit_sends_only_what_was_given() {
    let (spec, token) = edit_spec(edit_args(&[
        "orders",
        "--window",
        "15m",
        "--max-bytes",
        "1GB",
    ]))
    .expect("ok");
    let p = spec.into_spec(token);
    assert_eq!(p.name, "orders");
    assert_eq!(p.window.as_deref(), Some("15m"));
    assert_eq!(p.max_bytes.as_deref(), Some("1GB"));
    assert_eq!(p.topic, None);
    assert_eq!(p.token, None);
    let err = edit_spec(edit_args(&["orders"])).expect_err("nothing");
    assert!(err.to_string().starts_with("nothing to change"));
}

#[test]
fn delete_flags() {
    let parse_delete = |args: &[&str]| {
        let mut all = vec!["tdmq-backup", "rule", "delete"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| match c.command {
            Command::Rule(RuleCommand::Delete(d)) => d,
            other => panic!("not delete: {other:?}"),
        })
    };
    let d = parse_delete(&["orders", "--discard", "--yes"]).expect("parses");
    assert!(d.discard && d.yes && !d.drain);
    let d = parse_delete(&["orders", "--drain", "--drain-timeout", "2m"]).expect("parses");
    assert_eq!(d.drain_timeout, Some(std::time::Duration::from_secs(120)));
    assert!(parse_delete(&["orders", "--drain", "--discard"]).is_err());
    let d = parse_delete(&["orders", "--drain", "--unsubscribe"]).expect("parses");
    assert!(d.unsubscribe && d.drain);
    assert!(!parse_delete(&["orders"]).expect("parses").unsubscribe);
    assert!(parse_delete(&["orders", "--drain-timeout", "2m"]).is_err());
}

#[test]
fn logs_flags() {
    let cli = Cli::try_parse_from([
        "tdmq-backup",
        "logs",
        "orders",
        "--failed",
        "--since",
        "10m",
        "--limit",
        "20",
    ])
    .expect("parses");
    let Command::Logs(args) = cli.command else {
        panic!("not logs");
    };
    let req = crate::commands::logs::logs_request(&args);
    assert_eq!(req.name, "orders");
    assert!(req.failed_only);
    assert_eq!(req.since_secs, 600);
    assert_eq!(req.limit, 20);
    assert!(Cli::try_parse_from(["tdmq-backup", "logs", "orders", "--since", "soon"]).is_err());
}

#[test]
fn example_rule_file_parses_and_validates() {
    let text = include_str!("../../../../examples/rule.toml");
    let path = Path::new("examples/rule.toml");
    let (spec, token) = parse_rule_file(text, path).expect("examples/rule.toml parses");
    let rule = spec.validate().expect("examples/rule.toml validates");
    assert_eq!(rule.name, "orders-backup");
    assert_eq!(rule.prefix, "pulsar/");
    assert!(matches!(
        token,
        Some(TokenSource::File { path, .. }) if path == Path::new("examples/role-token.txt")
    ));
}
