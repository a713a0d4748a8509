#[test]
fn content_encoding_and_file_names_round_trip() {
    use super::{Compression, Format};
    for c in Compression::ALL {
        assert_eq!(Compression::from_content_encoding(c.content_encoding()), c);
        assert_eq!(Compression::parse(c.as_str()), Some(c));
        assert_eq!(Compression::from_key(&format!("a/b{}", c.extension())), c);
        assert_eq!(
            Format::from_key(&format!("a/b{}", c.extension())),
            Format::Jsonl
        );
        // A Parquet object is one file whatever compresses its pages.
        assert_eq!(Format::Parquet.extension(c), ".parquet");
        assert_eq!(Format::Parquet.content_encoding(c), "identity");
    }
    for f in Format::ALL {
        assert_eq!(Format::parse(f.as_str()), Some(f));
    }
    assert_eq!(Format::from_key("a/b.parquet"), Format::Parquet);
    assert_eq!(
        Format::Jsonl.segment_file_name(Compression::Zstd, 42),
        "00000000000000000042.jsonl.zst"
    );
    assert_eq!(
        Format::Jsonl.segment_file_name(Compression::Gzip, 42),
        "00000000000000000042.jsonl.gz"
    );
    assert_eq!(
        Format::Jsonl.segment_file_name(Compression::None, 7),
        "00000000000000000007.jsonl"
    );
    assert_eq!(
        Format::Parquet.segment_file_name(Compression::Zstd, 7),
        "00000000000000000007.parquet"
    );
}

use super::*;

fn valid_input() -> RuleSpecInput {
    RuleSpecInput {
        name: Some("orders-backup".into()),
        service_url: Some("pulsar://10.0.0.5:6650".into()),
        topic: Some("orders".into()),
        subscription: Some("backup".into()),
        bucket: Some("backup-1250000000".into()),
        region: Some("ap-guangzhou".into()),
        ..RuleSpecInput::default()
    }
}

fn field_of(input: RuleSpecInput) -> &'static str {
    input.validate().expect_err("must be refused").field
}

#[test]
fn defaults_fill_in() {
    let rule = valid_input().validate().expect("valid");
    assert_eq!(rule.topic, "persistent://public/default/orders");
    assert_eq!(rule.window_secs, 300);
    assert_eq!(rule.max_messages, 5000);
    assert_eq!(rule.max_bytes, 500_000_000);
    assert_eq!(rule.start, StartPosition::Earliest);
    assert_eq!(rule.compression, Compression::Gzip);
    assert_eq!(rule.subscription_type, SubscriptionKind::Failover);
    assert_eq!(rule.to_input().validate(), Ok(rule));
}

#[test]
fn each_bad_field_is_named() {
    let cases: Vec<(&str, RuleSpecInput)> = vec![
        (
            "name",
            RuleSpecInput {
                name: Some("9lives".into()),
                ..valid_input()
            },
        ),
        (
            "name",
            RuleSpecInput {
                name: Some("a".into()),
                ..valid_input()
            },
        ),
        (
            "name",
            RuleSpecInput {
                name: Some("Orders".into()),
                ..valid_input()
            },
        ),
        (
            "name",
            RuleSpecInput {
                name: Some("x".repeat(61)),
                ..valid_input()
            },
        ),
        (
            "name",
            RuleSpecInput {
                name: None,
                ..valid_input()
            },
        ),
        (
            "service_url",
            RuleSpecInput {
                service_url: Some("http://h:1".into()),
                ..valid_input()
            },
        ),
        (
            "service_url",
            RuleSpecInput {
                service_url: Some("pulsar://h".into()),
                ..valid_input()
            },
        ),
        (
            "topic",
            RuleSpecInput {
                topic: Some("a/b".into()),
                ..valid_input()
            },
        ),
        (
            "subscription",
            RuleSpecInput {
                subscription: Some("a b".into()),
                ..valid_input()
            },
        ),
        (
            "subscription_type",
            RuleSpecInput {
                subscription_type: Some("shared".into()),
                ..valid_input()
            },
        ),
        (
            "bucket",
            RuleSpecInput {
                bucket: Some("My_Bucket".into()),
                ..valid_input()
            },
        ),
        (
            "bucket",
            RuleSpecInput {
                bucket: Some("ab".into()),
                ..valid_input()
            },
        ),
        (
            "region",
            RuleSpecInput {
                region: Some("us-east-1".into()),
                ..valid_input()
            },
        ),
        (
            "endpoint",
            RuleSpecInput {
                endpoint: Some("ftp://x".into()),
                ..valid_input()
            },
        ),
        (
            "prefix",
            RuleSpecInput {
                prefix: Some("logs".into()),
                ..valid_input()
            },
        ),
        (
            "prefix",
            RuleSpecInput {
                prefix: Some("/logs/".into()),
                ..valid_input()
            },
        ),
        (
            "window",
            RuleSpecInput {
                window: Some("0s".into()),
                ..valid_input()
            },
        ),
        (
            "window",
            RuleSpecInput {
                window: Some("25h".into()),
                ..valid_input()
            },
        ),
        (
            "window",
            RuleSpecInput {
                window: Some("soon".into()),
                ..valid_input()
            },
        ),
        (
            "max_messages",
            RuleSpecInput {
                max_messages: Some(0),
                ..valid_input()
            },
        ),
        (
            "max_messages",
            RuleSpecInput {
                max_messages: Some(1_000_001),
                ..valid_input()
            },
        ),
        (
            "max_bytes",
            RuleSpecInput {
                max_bytes: Some("6GB".into()),
                ..valid_input()
            },
        ),
        (
            "max_bytes",
            RuleSpecInput {
                max_bytes: Some("0".into()),
                ..valid_input()
            },
        ),
        (
            "max_bytes",
            RuleSpecInput {
                max_bytes: Some("5 parsecs".into()),
                ..valid_input()
            },
        ),
        (
            "start",
            RuleSpecInput {
                start: Some("yesterday".into()),
                ..valid_input()
            },
        ),
        (
            "compression",
            RuleSpecInput {
                compression: Some("lz4".into()),
                ..valid_input()
            },
        ),
        (
            "compression_level",
            RuleSpecInput {
                compression: Some("zstd".into()),
                compression_level: Some(20),
                ..valid_input()
            },
        ),
        (
            "compression_level",
            RuleSpecInput {
                compression_level: Some(0),
                ..valid_input()
            },
        ),
        (
            "compression_level",
            RuleSpecInput {
                compression: Some("none".into()),
                compression_level: Some(3),
                ..valid_input()
            },
        ),
        (
            "layout",
            RuleSpecInput {
                layout: Some("daily".into()),
                ..valid_input()
            },
        ),
        (
            "format",
            RuleSpecInput {
                format: Some("csv".into()),
                ..valid_input()
            },
        ),
    ];
    for (field, input) in cases {
        assert_eq!(field_of(input.clone()), field, "{input:?}");
    }
}

#[test]
fn non_persistent_topics_are_refused_naming_topic() {
    let err = RuleSpecInput {
        topic: Some("non-persistent://public/default/ticks".into()),
        ..valid_input()
    }
    .validate()
    .expect_err("refused");
    assert_eq!(err.field, "topic");
    assert!(err.message.contains("non-persistent"), "{err}");
    assert!(err.message.contains("persistent://"), "{err}");
}

#[test]
fn dot_path_parts_are_refused_in_prefix_and_topic() {
    for prefix in ["./", "../", "a/./", "a/../b/", "backup/../"] {
        let err = RuleSpecInput {
            prefix: Some(prefix.into()),
            ..valid_input()
        }
        .validate()
        .expect_err(prefix);
        assert_eq!(err.field, "prefix", "{prefix}: {err}");
    }
    // Dots inside a part are ordinary characters.
    for prefix in ["a.b/", "..a/", "v1.2/x../"] {
        let input = RuleSpecInput {
            prefix: Some(prefix.into()),
            ..valid_input()
        };
        assert!(input.validate().is_ok(), "{prefix}");
    }
    for topic in [
        "persistent://./default/orders",
        "persistent://public/../orders",
        "persistent://public/default/..",
        ".",
        "..",
    ] {
        let err = RuleSpecInput {
            topic: Some(topic.into()),
            ..valid_input()
        }
        .validate()
        .expect_err(topic);
        assert_eq!(err.field, "topic", "{topic}: {err}");
        assert!(err.message.contains("path part"), "{topic}: {err}");
    }
    let input = RuleSpecInput {
        topic: Some("persistent://public/default/orders.v2".into()),
        ..valid_input()
    };
    assert!(input.validate().is_ok());
}

#[test]
fn a_shared_subscription_is_refused_naming_it() {
    let first = valid_input().validate().expect("valid");
    let second = RuleSpecInput {
        name: Some("orders-again".into()),
        // The short name `orders` of the first, written in full.
        topic: Some("persistent://public/default/orders".into()),
        service_url: Some("pulsar://10.0.0.5:6650/".into()),
        ..valid_input()
    }
    .validate()
    .expect("valid");
    let err = second
        .check_no_shared_subscription([&first])
        .expect_err("same subscription");
    assert_eq!(err.field, "subscription");
    assert!(err.message.contains("\"orders-backup\""), "{err}");
    // A rule does not clash with itself (an edit checks against every stored rule).
    assert!(first.check_no_shared_subscription([&first]).is_ok());
    for other in [
        RuleSpecInput {
            subscription: Some("other".into()),
            ..valid_input()
        },
        RuleSpecInput {
            topic: Some("payments".into()),
            ..valid_input()
        },
        RuleSpecInput {
            service_url: Some("pulsar://10.0.0.6:6650".into()),
            ..valid_input()
        },
    ] {
        let other = RuleSpecInput {
            name: Some("other-rule".into()),
            ..other
        }
        .validate()
        .expect("valid");
        assert!(
            other.check_no_shared_subscription([&first]).is_ok(),
            "{other:?}"
        );
    }
}

#[test]
fn prefix_message_says_what_to_do() {
    let err = RuleSpecInput {
        prefix: Some("logs".into()),
        ..valid_input()
    }
    .validate()
    .expect_err("refused");
    assert_eq!(err.to_string(), r#"prefix "logs" must end with "/""#);
}

#[test]
fn other_regions_need_an_endpoint() {
    let input = RuleSpecInput {
        region: Some("us-east-1".into()),
        endpoint: Some("http://127.0.0.1:9000".into()),
        ..valid_input()
    };
    assert!(input.validate().is_ok());
    assert_eq!(
        cos_endpoint("ap-shanghai").as_deref(),
        Some("https://cos.ap-shanghai.myqcloud.com")
    );
    assert_eq!(cos_endpoint("us-east-1"), None);
}

#[test]
fn sizes_use_decimal_and_binary_units() {
    assert_eq!(parse_size("500MB"), Ok(500_000_000));
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("1 KB"), Ok(1000));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert_eq!(parse_size("1.5KB"), Ok(1500));
    assert_eq!(parse_size("123"), Ok(123));
    assert!(parse_size("1.5B").is_err());
    assert!(parse_size("MB").is_err());
}

#[test]
fn windows_and_start_positions() {
    assert_eq!(parse_window("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_window("24h"), Ok(MAX_WINDOW));
    assert!(parse_window("1500ms").is_err());
    assert_eq!(
        StartPosition::parse("2026-11-24T02:44:19.913Z"),
        Ok(StartPosition::Timestamp(1_795_488_259_913))
    );
    assert_eq!(StartPosition::parse("latest"), Ok(StartPosition::Latest));
}

#[test]
fn changed_fields_names_what_differs() {
    let a = valid_input();
    let b = RuleSpecInput {
        window: Some("10m".into()),
        prefix: Some("p/".into()),
        ..valid_input()
    };
    assert_eq!(a.changed_fields(&b), vec!["prefix", "window"]);
    assert!(a.changed_fields(&a).is_empty());
}

#[test]
fn levels_are_checked_per_compression_and_default_when_unset() {
    let at = |compression: &str, level: Option<u32>| RuleSpecInput {
        compression: Some(compression.into()),
        compression_level: level,
        ..valid_input()
    };
    let rule = at("zstd", None).validate().expect("valid");
    assert_eq!((rule.compression, rule.level()), (Compression::Zstd, 1));
    let rule = at("zstd", Some(19)).validate().expect("valid");
    assert_eq!(rule.level(), 19);
    assert_eq!(at("gzip", None).validate().expect("valid").level(), 1);
    assert_eq!(at("gzip", Some(9)).validate().expect("valid").level(), 9);
    assert_eq!(at("none", None).validate().expect("valid").level(), 0);
    let err = at("gzip", Some(12))
        .validate()
        .expect_err("gzip stops at 9");
    assert_eq!(err.field, "compression_level");
    assert_eq!(
        err.message,
        "compression_level 12 must be between 1 and 9 for gzip"
    );
    let err = at("none", Some(1))
        .validate()
        .expect_err("none has no level");
    assert!(
        err.message.contains("only gzip and zstd have levels"),
        "{err}"
    );
    // Hive layout round-trips through the stored form.
    let hive = RuleSpecInput {
        layout: Some("hive".into()),
        ..at("zstd", Some(7))
    }
    .validate()
    .expect("valid");
    assert_eq!(hive.layout, KeyLayout::Hive);
    assert_eq!(hive.to_input().validate(), Ok(hive.clone()));
    let shown = hive.to_rule(RuleState::default());
    assert_eq!(
        (
            shown.compression.as_str(),
            shown.compression_level,
            shown.layout.as_str()
        ),
        ("zstd", 7, "hive")
    );
    assert_eq!(RuleSpecInput::from(&shown).validate(), Ok(hive));
}

#[test]
fn a_new_compression_without_a_level_drops_the_old_level() {
    let zstd9 = RuleSpecInput {
        compression: Some("zstd".into()),
        compression_level: Some(9),
        ..valid_input()
    };
    let gzip = zstd9.clone().overlay(RuleSpecInput {
        compression: Some("gzip".into()),
        ..RuleSpecInput::default()
    });
    assert_eq!(gzip.validate().expect("valid").level(), 1);
    let gzip5 = zstd9.clone().overlay(RuleSpecInput {
        compression: Some("gzip".into()),
        compression_level: Some(5),
        ..RuleSpecInput::default()
    });
    assert_eq!(gzip5.validate().expect("valid").level(), 5);
    // Only the level: the compression stays.
    let zstd4 = zstd9.overlay(RuleSpecInput {
        compression_level: Some(4),
        ..RuleSpecInput::default()
    });
    let rule = zstd4.validate().expect("valid");
    assert_eq!((rule.compression, rule.level()), (Compression::Zstd, 4));
}

#[test]
fn overlay_keeps_unset_fields() {
    let base = valid_input();
    let patched = base.clone().overlay(RuleSpecInput {
        window: Some("10m".into()),
        ..RuleSpecInput::default()
    });
    assert_eq!(patched.topic, base.topic);
    assert_eq!(patched.window.as_deref(), Some("10m"));
}

#[test]
fn the_request_form_carries_every_field_both_ways() {
    let input = RuleSpecInput {
        name: Some("orders".into()),
        subscription_type: Some("exclusive".into()),
        window: Some("10m".into()),
        max_messages: Some(7),
        max_bytes: Some("64MiB".into()),
        start: Some("latest".into()),
        cluster: Some("c1".into()),
        role: Some("r".into()),
        endpoint: Some("https://s3.example".into()),
        compression: Some("none".into()),
        ..valid_input()
    };
    let spec = input.clone().into_spec(Some("t0ken".into()));
    assert_eq!(spec.token.as_deref(), Some("t0ken"));
    assert_eq!(spec.name, "orders");
    assert_eq!(RuleSpecInput::from(&spec), input);
    // An edit names the rule only in the request's `name`.
    let unnamed = RuleSpecInput::from(&crate::v1::RuleSpec::default());
    assert_eq!(unnamed, RuleSpecInput::default());
}

#[test]
fn the_api_form_shows_every_field_and_the_state() {
    let config = valid_input().validate().expect("valid");
    let rule = config.to_rule(RuleState {
        has_token: true,
        paused: true,
        created_at_ms: 0,
        updated_at_ms: 1_000,
    });
    assert_eq!(rule.name, config.name);
    assert_eq!(rule.window_secs, config.window_secs);
    assert_eq!(rule.subscription_type, "failover");
    assert!(rule.has_token && rule.paused);
    assert_eq!(rule.updated_at, "1970-01-01T00:00:01.000Z");
    // Back to the input form and validated again: the same rule.
    let input = RuleSpecInput::from(&crate::v1::RuleSpec {
        name: rule.name.clone(),
        ..config.to_input().into_spec(None)
    });
    assert_eq!(input.validate().expect("valid"), config);
}

#[test]
fn every_missing_required_field_is_listed_at_once() {
    let spec = RuleSpecInput {
        name: Some("orders".into()),
        topic: Some("orders".into()),
        region: Some("  ".into()),
        ..RuleSpecInput::default()
    };
    let err = spec.validate().expect_err("four fields missing");
    assert_eq!(err.field, "service_url");
    assert_eq!(
        err.to_string(),
        "service_url, subscription, bucket and region are required"
    );
    let one = RuleSpecInput {
        region: None,
        ..valid_input()
    };
    assert_eq!(
        one.validate().expect_err("region missing").to_string(),
        "region is required"
    );
}

#[test]
fn a_stored_rule_becomes_the_spec_that_recreates_it() {
    let spec = RuleSpecInput {
        window: Some("1h30m".into()),
        max_bytes: Some("64MiB".into()),
        ..valid_input()
    };
    let config = spec.validate().expect("valid");
    let stored = config.to_rule(RuleState::default());
    let again = RuleSpecInput::from(&stored);
    assert_eq!(again.window.as_deref(), Some("1h30m"));
    assert_eq!(again.max_bytes.as_deref(), Some("67108864"));
    assert_eq!(again.endpoint, None);
    assert_eq!(again.validate().expect("still valid"), config);
}

#[test]
fn changes_from_keeps_only_the_differing_fields() {
    let base = RuleSpecInput {
        name: Some("orders".into()),
        topic: Some("orders".into()),
        window: Some("5m".into()),
        ..RuleSpecInput::default()
    };
    let wanted = RuleSpecInput {
        window: Some("10m".into()),
        ..base.clone()
    };
    let patch = wanted.changes_from(&base);
    assert_eq!(patch.name.as_deref(), Some("orders"));
    assert_eq!(patch.window.as_deref(), Some("10m"));
    assert_eq!(patch.topic, None);
    assert_eq!(
        base.changes_from(&base).changed_fields(&RuleSpecInput {
            name: base.name.clone(),
            ..RuleSpecInput::default()
        }),
        Vec::<&str>::new()
    );
}

#[test]
fn rules_beyond_the_consoles_limits_are_noted_not_refused() {
    let spec = valid_input();
    let defaults = spec.validate().expect("valid");
    assert_eq!(defaults.beyond_console_limits(), Vec::<String>::new());
    let wide = RuleSpecInput {
        window: Some("30s".into()),
        max_messages: Some(20_000),
        max_bytes: Some("1GB".into()),
        ..spec
    }
    .validate()
    .expect("still valid");
    let notes = wide.beyond_console_limits();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].starts_with("window 30s is shorter"), "{notes:?}");
    assert!(notes[1].starts_with("max_messages 20000"), "{notes:?}");
    assert!(notes[2].starts_with("max_bytes 1000000000"), "{notes:?}");
}

#[test]
fn parquet_pages_are_zstd_unless_the_rule_names_a_compression() -> Result<(), RuleError> {
    let parquet = RuleSpecInput {
        format: Some("parquet".into()),
        ..valid_input()
    }
    .validate()?;
    assert_eq!(
        (parquet.format, parquet.compression),
        (Format::Parquet, Compression::Zstd)
    );
    let gzip_pages = RuleSpecInput {
        format: Some("parquet".into()),
        compression: Some("gzip".into()),
        compression_level: Some(6),
        ..valid_input()
    }
    .validate()?;
    assert_eq!(
        (gzip_pages.compression, gzip_pages.level()),
        (Compression::Gzip, 6)
    );
    let jsonl = valid_input().validate()?;
    assert_eq!(
        (jsonl.format, jsonl.compression),
        (Format::Jsonl, Compression::Gzip)
    );
    // Shown and re-applied as written.
    assert_eq!(parquet.to_input().validate()?, parquet);
    assert_eq!(parquet.to_rule(RuleState::default()).format, "parquet");
    Ok(())
}

#[test]
fn a_new_format_without_a_compression_takes_the_formats_default() -> Result<(), RuleError> {
    let stored = RuleSpecInput {
        compression: Some("gzip".into()),
        compression_level: Some(6),
        ..valid_input()
    }
    .validate()?
    .to_input();
    let edited = stored
        .clone()
        .overlay(RuleSpecInput {
            format: Some("parquet".into()),
            ..RuleSpecInput::default()
        })
        .validate()?;
    assert_eq!(
        (edited.format, edited.compression, edited.level()),
        (Format::Parquet, Compression::Zstd, 1)
    );
    let kept = stored
        .overlay(RuleSpecInput {
            format: Some("parquet".into()),
            compression: Some("gzip".into()),
            ..RuleSpecInput::default()
        })
        .validate()?;
    assert_eq!(
        (kept.format, kept.compression),
        (Format::Parquet, Compression::Gzip)
    );
    Ok(())
}
