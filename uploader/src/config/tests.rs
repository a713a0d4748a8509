use edge::logging::LogFormat;

use super::*;

fn args(flags: &[&str]) -> Args {
    let mut argv = vec!["tdmq-backup-uploader"];
    argv.extend_from_slice(flags);
    Args::try_parse_from(argv).expect("flags parse")
}

fn build(flags: &[&str], file: Option<&str>) -> Result<UploaderConfig, UploadError> {
    UploaderConfig::build(args(flags), file, Credentials::DefaultChain)
}

fn field_of(result: Result<UploaderConfig, UploadError>) -> &'static str {
    match result {
        Err(UploadError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = build(&[], None).expect("defaults are valid");
    assert_eq!(c.ingester(), "http://127.0.0.1:7601");
    assert_eq!(c.daemon.listen, "127.0.0.1:7602".parse().expect("literal"));
    assert_eq!(c.state_dir, PathBuf::from("./uploader-state"));
    assert_eq!(c.endpoint, None);
    assert!(!c.path_style);
    assert_eq!(c.region, None);
    assert_eq!(c.concurrency, 4);
    assert!(c.read_local);
    assert_eq!(c.part_size, 8 << 20);
    assert_eq!(c.multipart_threshold, 8 << 20);
    assert_eq!(c.max_backoff, Duration::from_secs(30));
    assert_eq!(c.daemon.log_format, LogFormat::Text);
    assert_eq!(c.request_checksum, ChecksumChoice::Auto);
    assert_eq!(c.payload_signing, PayloadSigning::Auto);
}

#[test]
fn file_values_and_flags_win() {
    let file = r#"
        ingester = "http://ingester:7601"
        listen = "0.0.0.0:9000"
        allow_unauthenticated = true
        state_dir = "/var/lib/up"
        endpoint = "http://127.0.0.1:9000"
        path_style = true
        request_checksum = "md5"
        payload_signing = "always"
        region = "us-east-1"
        concurrency = 2
        read_local = false
        part_size = "16MB"
        multipart_threshold = 6000000
        max_backoff = "2m"
        log_format = "json"
    "#;
    let c = build(&[], Some(file)).expect("valid file");
    assert!(!c.read_local);
    assert!(
        build(&["--read-local"], Some(file))
            .expect("valid")
            .read_local
    );
    assert_eq!(c.ingester(), "http://ingester:7601");
    assert_eq!(
        c.endpoint,
        Some(StoreEndpoint::S3 {
            url: "http://127.0.0.1:9000".into()
        })
    );
    assert!(c.path_style);
    assert_eq!(
        c.request_checksum,
        ChecksumChoice::Fixed(crate::store::RequestChecksum::Md5)
    );
    assert_eq!(c.payload_signing, PayloadSigning::Always);
    assert_eq!(c.concurrency, 2);
    assert_eq!(c.part_size, 16_000_000);
    assert_eq!(c.multipart_threshold, 6_000_000);
    assert_eq!(c.max_backoff, Duration::from_secs(120));
    assert_eq!(c.daemon.log_format, LogFormat::Json);

    let c = build(
        &[
            "--concurrency",
            "8",
            "--part-size",
            "8MiB",
            "--path-style=false",
            "--endpoint",
            "file:///tmp/s",
            "--request-checksum",
            "crc32c",
        ],
        Some(file),
    )
    .expect("flags override");
    assert_eq!(c.concurrency, 8);
    assert_eq!(c.part_size, 8 << 20);
    assert_eq!(c.multipart_threshold, 6_000_000);
    assert!(!c.path_style);
    assert_eq!(
        c.request_checksum,
        ChecksumChoice::Fixed(crate::store::RequestChecksum::Crc32c)
    );
    assert_eq!(
        c.endpoint,
        Some(StoreEndpoint::File {
            dir: "/tmp/s".into()
        })
    );
}

#[test]
fn threshold_defaults_to_part_size() {
    let c = build(&["--part-size", "16MiB"], None).expect("valid");
    assert_eq!(c.multipart_threshold, 16 << 20);
}

#[test]
fn unknown_key_is_named() {
    let err = build(&[], Some("concurrencyy = 3\n")).expect_err("typo refused");
    assert!(err.to_string().contains("concurrencyy"), "{err}");
}

#[test]
fn bad_values_name_their_field() {
    assert_eq!(field_of(build(&["--part-size", "4MiB"], None)), "part_size");
    assert_eq!(
        field_of(build(&["--part-size", "8 parsecs"], None)),
        "part_size"
    );
    assert_eq!(field_of(build(&["--part-size", "6GiB"], None)), "part_size");
    assert_eq!(
        field_of(build(&["--multipart-threshold", "9MiB"], None)),
        "multipart_threshold"
    );
    assert_eq!(
        field_of(build(&["--concurrency", "0"], None)),
        "concurrency"
    );
    assert_eq!(
        field_of(build(&["--max-backoff", "soon"], None)),
        "max_backoff"
    );
    assert_eq!(
        field_of(build(&["--ingester", "127.0.0.1:7601"], None)),
        "ingester"
    );
    assert_eq!(field_of(build(&["--listen", "localhost"], None)), "listen");
    assert_eq!(
        field_of(build(&["--endpoint", "s3://bucket"], None)),
        "endpoint"
    );
    assert_eq!(
        field_of(build(&["--endpoint", "http://ak:sk@host:9000"], None)),
        "endpoint"
    );
    assert_eq!(field_of(build(&["--region", "AP_GZ"], None)), "region");
    assert_eq!(
        field_of(build(&["--log-format", "xml"], None)),
        "log_format"
    );
    assert_eq!(
        field_of(build(&["--request-checksum", "sha1"], None)),
        "request_checksum"
    );
    assert_eq!(
        field_of(build(&["--payload-signing", "never"], None)),
        "payload_signing"
    );
    assert_eq!(field_of(build(&[], Some("part_size = true"))), "config");
}

#[test]
fn example_configs_parse() {
    for (name, text) in [
        (
            "examples/uploader.toml",
            include_str!("../../../examples/uploader.toml"),
        ),
        (
            "examples/uploader-s3.toml",
            include_str!("../../../examples/uploader-s3.toml"),
        ),
    ] {
        let c = build(&[], Some(text)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.daemon.listen.to_string(), DEFAULT_LISTEN, "{name}");
    }
    let c = build(&[], Some(include_str!("../../../examples/uploader.toml"))).expect("valid");
    assert_eq!(
        c.daemon.metrics_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:7612")
    );
    assert!(c.daemon.auth_token_file.is_some());
    assert!(
        c.endpoint.is_none(),
        "the COS example uses each rule's region"
    );
    let c = build(
        &[],
        Some(include_str!("../../../examples/uploader-s3.toml")),
    )
    .expect("valid");
    assert!(c.path_style);
    assert!(c.endpoint.is_some());
}

#[test]
fn listen_beyond_loopback_needs_a_token_file_or_allow_unauthenticated() {
    let err = build(&["--listen", "0.0.0.0:7602"], None).expect_err("open control plane");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            UploadError::Config {
                field: "listen",
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("0.0.0.0:7602")
            && text.contains("auth_token_file")
            && text.contains("allow_unauthenticated"),
        "{text}"
    );
    let c = build(
        &["--listen", "0.0.0.0:7602", "--auth-token-file", "/etc/t"],
        None,
    )
    .expect("a token file");
    assert!(!c.daemon.allow_unauthenticated);
    let c = build(&["--listen", "[::]:7602", "--allow-unauthenticated"], None).expect("opt-out");
    assert!(c.daemon.allow_unauthenticated);
    let file = "listen = \"10.0.0.22:7602\"\nallow_unauthenticated = true\n";
    assert!(
        build(&[], Some(file))
            .expect("opt-out in the file")
            .daemon
            .allow_unauthenticated
    );
    assert_eq!(
        field_of(build(&["--allow-unauthenticated=false"], Some(file))),
        "listen"
    );
}

#[test]
fn allowed_endpoints_from_flag_env_or_file_and_never_file_urls() {
    assert!(build(&[], None)
        .expect("defaults")
        .allowed_endpoints
        .is_empty());
    let c = build(
        &[
            "--allowed-endpoints",
            "https://a.example:9000/, http://b:9000",
        ],
        None,
    )
    .expect("a list");
    assert_eq!(
        c.allowed_endpoints,
        vec!["https://a.example:9000".to_string(), "http://b:9000".into()]
    );
    let c = build(
        &[],
        Some("allowed_endpoints = [\"https://a\", \"https://b\"]\n"),
    )
    .expect("a TOML array");
    assert_eq!(c.allowed_endpoints.len(), 2);
    let c = build(&[], Some("allowed_endpoints = \"https://a\"\n")).expect("a string");
    assert_eq!(c.allowed_endpoints, vec!["https://a".to_string()]);
    assert_eq!(
        field_of(build(&["--allowed-endpoints", "file:///tmp/x"], None)),
        "allowed_endpoints"
    );
    assert_eq!(
        field_of(build(&[], Some("allowed_endpoints = [\"s3.example\"]\n"))),
        "allowed_endpoints"
    );
}

#[test]
fn ingester_data_dir_is_optional_and_absolute() {
    assert_eq!(build(&[], None).expect("defaults").ingester_data_dir, None);
    let c = build(
        &[],
        Some("ingester_data_dir = \"/var/lib/tdmq-backup/ingester\"\n"),
    )
    .expect("absolute");
    assert_eq!(
        c.ingester_data_dir,
        Some(PathBuf::from("/var/lib/tdmq-backup/ingester"))
    );
    assert_eq!(
        field_of(build(&["--ingester-data-dir", "ingester-data"], None)),
        "ingester_data_dir"
    );
}

#[test]
fn metrics_listen_and_auth_token_file() {
    let c = build(&[], None).expect("defaults");
    assert_eq!(
        (c.daemon.metrics_listen, c.daemon.auth_token_file),
        (None, None)
    );
    let c = build(
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--auth-token-file",
            "/etc/t",
        ],
        Some("metrics_listen = \"\"\n"),
    )
    .expect("valid");
    assert!(c.daemon.metrics_listen.is_some());
    assert_eq!(c.daemon.auth_token_file, Some(PathBuf::from("/etc/t")));
    assert_eq!(
        field_of(build(&["--metrics-listen", "localhost"], None)),
        "metrics_listen"
    );
}

#[test]
fn tls_keys_are_checked_and_named() {
    let c = build(&[], None).expect("defaults");
    assert!(c.ingester_tls.is_none() && c.daemon.tls.is_none());
    assert_eq!(
        field_of(build(&["--tls-cert", "/etc/c.pem"], None)),
        "tls_key"
    );
    assert_eq!(
        field_of(build(&[], Some("tls_key = \"/etc/k.pem\"\n"))),
        "tls_cert"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir
        .path()
        .join("missing.pem")
        .to_string_lossy()
        .into_owned();
    let err =
        build(&["--tls-cert", &missing, "--tls-key", &missing], None).expect_err("unreadable");
    assert!(
        err.to_string()
            .starts_with(&format!("invalid tls_cert: {missing}: cannot read it")),
        "{err}"
    );
    let err = build(
        &[
            "--ingester",
            "https://10.0.0.1:7601",
            "--ingester-ca",
            &missing,
        ],
        None,
    )
    .expect_err("unreadable CA");
    assert!(
        err.to_string()
            .starts_with(&format!("invalid ingester_ca: {missing}: cannot read it")),
        "{err}"
    );
    // A CA for a plain-HTTP ingester is a mistake, not something to ignore.
    assert_eq!(
        field_of(build(&["--ingester-ca", &missing], None)),
        "ingester_ca"
    );
    assert_eq!(
        field_of(build(&["--ingester-tls-domain", "ingester.internal"], None)),
        "ingester_tls_domain"
    );
}

#[test]
fn credentials_prefer_cos_and_stay_secret() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let c = Credentials::from_env(env(&[
        ("COS_SECRET_ID", "AKIDcos"),
        ("COS_SECRET_KEY", "cos-secret-value"),
        ("AWS_ACCESS_KEY_ID", "AKIAaws"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
    ]))
    .expect("valid");
    match &c {
        Credentials::Static {
            source,
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            assert_eq!(*source, "COS_SECRET_ID/COS_SECRET_KEY");
            assert_eq!(access_key_id.expose(), "AKIDcos");
            assert_eq!(secret_access_key.expose(), "cos-secret-value");
            assert_eq!(*session_token, None);
        }
        Credentials::DefaultChain => panic!("static expected"),
    }
    assert!(!format!("{c:?}").contains("cos-secret-value"));

    let c = Credentials::from_env(env(&[
        ("AWS_ACCESS_KEY_ID", "AKIAaws"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
        ("AWS_SESSION_TOKEN", "tok"),
    ]))
    .expect("valid");
    assert!(matches!(
        c,
        Credentials::Static {
            source: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            session_token: Some(_),
            ..
        }
    ));

    let err = Credentials::from_env(env(&[("COS_SECRET_ID", "AKIDcos")])).expect_err("half a pair");
    assert!(matches!(
        err,
        UploadError::Config {
            field: "COS_SECRET_KEY",
            ..
        }
    ));
    assert_eq!(
        Credentials::from_env(env(&[])).expect("empty env"),
        Credentials::DefaultChain
    );
}

#[test]
fn ingester_takes_a_list_in_the_file_or_a_comma_list_on_the_command_line() {
    let file = build(
        &[],
        Some("ingester = [\"http://a:7601\", \"http://b:7601\", \"http://a:7601\"]\n"),
    )
    .expect("a list");
    assert_eq!(
        file.ingesters,
        ["http://a:7601", "http://b:7601"],
        "repeats dropped"
    );
    assert_eq!(
        file.ingester(),
        "http://a:7601",
        "the first is restore's and verify's"
    );
    let flag = build(&["--ingester", "http://a:7601, http://b:7601"], None).expect("a flag list");
    assert_eq!(flag.ingesters, file.ingesters);
    let one = build(&[], Some("ingester = \"http://a:7601\"\n")).expect("one as text");
    assert_eq!(one.ingesters, ["http://a:7601"]);
    assert_eq!(
        build(&[], None).expect("defaults").ingesters,
        ["http://127.0.0.1:7601"]
    );
    for bad in [
        "ingester = []\n",
        "ingester = [\"http://a:7601\", \"b:7601\"]\n",
        "ingester = [\"http://a:7601\", \"https://b:7601\"]\n",
    ] {
        assert_eq!(field_of(build(&[], Some(bad))), "ingester", "{bad}");
    }
    let mixed = build(&["--ingester", "http://a:1,https://b:2"], None).expect_err("mixed");
    assert!(
        mixed.to_string().contains("mix http:// and https://"),
        "{mixed}"
    );
}
