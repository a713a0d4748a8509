use super::*;

const AUTO: ChecksumChoice = ChecksumChoice::Auto;

/// An `allowed_endpoints` naming one S3 server.
fn minio() -> Vec<String> {
    vec!["http://minio:9000".into()]
}

fn s3(endpoint: &str, region: &str, path_style: bool) -> Target {
    Target::S3(S3Target {
        endpoint: endpoint.into(),
        region: region.into(),
        path_style,
        checksum: ChecksumChoice::Auto.for_endpoint(endpoint),
    })
}

#[test]
fn cos_region_resolves_to_virtual_hosted_cos() {
    let t =
        resolve_target(None, &minio(), None, true, AUTO, "", "ap-guangzhou").expect("known region");
    assert_eq!(
        t,
        s3(
            "https://cos.ap-guangzhou.myqcloud.com",
            "ap-guangzhou",
            false
        )
    );
}

#[test]
fn rule_endpoint_beats_region_and_uses_path_style_setting() {
    let t = resolve_target(
        None,
        &minio(),
        None,
        true,
        AUTO,
        "http://minio:9000",
        "us-east-1",
    )
    .expect("ok");
    assert_eq!(t, s3("http://minio:9000", "us-east-1", true));
    let t =
        resolve_target(None, &minio(), None, false, AUTO, "http://minio:9000/", "").expect("ok");
    assert_eq!(t, s3("http://minio:9000", FALLBACK_REGION, false));
    // A COS endpoint given explicitly (a region outside the known seven) stays virtual-hosted.
    let t = resolve_target(
        None,
        &minio(),
        None,
        true,
        AUTO,
        "https://cos.ap-nanjing.myqcloud.com",
        "ap-nanjing",
    )
    .expect("ok");
    assert_eq!(
        t,
        s3("https://cos.ap-nanjing.myqcloud.com", "ap-nanjing", false)
    );
}

#[test]
fn a_rule_endpoint_is_honoured_only_if_allowed_and_never_file() {
    let err = resolve_target(
        None,
        &[],
        None,
        true,
        AUTO,
        "http://minio:9000",
        "us-east-1",
    )
    .expect_err("not in allowed_endpoints");
    assert!(matches!(err, UploadError::EndpointNotAllowed(_)), "{err:?}");
    assert!(
        err.to_string().contains("allowed_endpoints") && err.to_string().contains("minio"),
        "{err}"
    );
    let err = resolve_target(None, &minio(), None, true, AUTO, "http://evil:9000", "x")
        .expect_err("another host");
    assert!(err.to_string().contains("http://evil:9000"), "{err}");
    // The list is matched without regard to case or a trailing slash.
    let t = resolve_target(None, &minio(), None, true, AUTO, "http://MINIO:9000/", "x")
        .expect("listed");
    assert!(matches!(t, Target::S3(_)), "{t:?}");
    // The COS endpoint of the rule's own region needs no listing (any COS region).
    let t = resolve_target(
        None,
        &[],
        None,
        false,
        AUTO,
        "https://cos.ap-nanjing.myqcloud.com",
        "ap-nanjing",
    )
    .expect("the rule region's COS endpoint");
    assert_eq!(
        t,
        s3("https://cos.ap-nanjing.myqcloud.com", "ap-nanjing", false)
    );
    let err = resolve_target(
        None,
        &[],
        None,
        false,
        AUTO,
        "https://cos.ap-nanjing.myqcloud.com",
        "ap-beijing",
    )
    .expect_err("another region's endpoint is another endpoint");
    assert!(matches!(err, UploadError::EndpointNotAllowed(_)), "{err:?}");
    // file:// never comes from a rule, whatever the list says.
    for allowed in [vec![], vec!["file:///data/store".to_string()]] {
        let err = resolve_target(None, &allowed, None, false, AUTO, "file:///data/store", "x")
            .expect_err("file:// from a rule");
        assert!(err.to_string().contains("file://"), "{err}");
    }
}

#[test]
fn allowed_endpoints_are_s3_urls_only() {
    assert_eq!(
        parse_allowed_endpoints(&[" https://s3.example.com/ ".into(), String::new()]),
        Ok(vec!["https://s3.example.com".to_string()])
    );
    let err = parse_allowed_endpoints(&["file:///var/backups".into()]).expect_err("file://");
    assert!(err.contains("file://") && err.contains("endpoint"), "{err}");
    assert!(parse_allowed_endpoints(&["minio:9000".into()]).is_err());
}

#[test]
fn override_beats_rule_and_region_override_beats_rule_region() {
    let o = StoreEndpoint::parse("http://127.0.0.1:9000").expect("valid");
    let t = resolve_target(
        Some(&o),
        &minio(),
        Some("us-west-2"),
        true,
        AUTO,
        "https://other",
        "ap-guangzhou",
    )
    .expect("ok");
    assert_eq!(t, s3("http://127.0.0.1:9000", "us-west-2", true));
    let t = resolve_target(Some(&o), &minio(), None, false, AUTO, "", "ap-guangzhou").expect("ok");
    assert_eq!(t, s3("http://127.0.0.1:9000", "ap-guangzhou", false));
    let f = StoreEndpoint::parse("file://./local").expect("valid");
    let t = resolve_target(Some(&f), &minio(), None, false, AUTO, "", "ap-guangzhou").expect("ok");
    assert_eq!(t, Target::File("./local".into()));
}

#[test]
fn cos_is_known_by_either_of_its_domains() {
    for cos in [
        "https://cos.ap-guangzhou.myqcloud.com",
        "https://cos.ap-guangzhou.tencentcos.cn",
        "https://COS.AP-BEIJING.TENCENTCOS.CN:443/",
        "cos.ap-shanghai.myqcloud.com",
    ] {
        assert!(is_cos_endpoint(cos), "{cos}");
    }
    for other in [
        "http://127.0.0.1:9000",
        "https://s3.amazonaws.com",
        "https://myqcloud.com.example.org",
        "https://example.org/cos.ap-guangzhou.myqcloud.com",
    ] {
        assert!(!is_cos_endpoint(other), "{other}");
    }
}

#[test]
fn auto_checksum_is_md5_for_cos_and_crc32c_elsewhere() {
    let checksum_of = |choice, endpoint: &str, region| match resolve_target(
        None,
        &minio(),
        None,
        false,
        choice,
        endpoint,
        region,
    ) {
        Ok(Target::S3(t)) => t.checksum,
        other => panic!("not an S3 target: {other:?}"),
    };
    assert_eq!(checksum_of(AUTO, "", "ap-guangzhou"), RequestChecksum::Md5);
    assert_eq!(
        checksum_of(AUTO, "https://cos.ap-nanjing.myqcloud.com", "ap-nanjing"),
        RequestChecksum::Md5
    );
    assert_eq!(
        checksum_of(AUTO, "http://minio:9000", "us-east-1"),
        RequestChecksum::Crc32c
    );
    let md5 = ChecksumChoice::parse("MD5").expect("valid");
    assert_eq!(
        checksum_of(md5, "http://minio:9000", ""),
        RequestChecksum::Md5
    );
    let crc = ChecksumChoice::parse(" crc32c ").expect("valid");
    assert_eq!(checksum_of(crc, "", "ap-beijing"), RequestChecksum::Crc32c);
    let err = ChecksumChoice::parse("sha1").expect_err("unknown");
    assert!(err.contains("sha1") && err.contains("crc32c"), "{err}");
}

#[test]
fn payloads_are_signed_over_http_or_when_asked() {
    assert!(!PayloadSigning::Auto.signs("https://cos.ap-beijing.myqcloud.com"));
    assert!(PayloadSigning::Auto.signs("http://minio:9000"));
    let always = PayloadSigning::parse(" Always ").expect("valid");
    assert!(always.signs("https://s3.example.com"));
    let err = PayloadSigning::parse("never").expect_err("not offered");
    assert!(err.contains("never") && err.contains("always"), "{err}");
}

#[test]
fn resume_records_without_a_checksum_were_md5_uploads() {
    let old = r#"{"endpoint":"http://s3:9000","region":"us-east-1","path_style":true}"#;
    let target: S3Target = serde_json::from_str(old).expect("old record");
    assert_eq!(target.checksum, RequestChecksum::Md5);
}

#[test]
fn unknown_region_without_endpoint_is_refused() {
    let err =
        resolve_target(None, &minio(), None, false, AUTO, "", "mars-1").expect_err("no endpoint");
    assert!(err.to_string().contains("mars-1"), "{err}");
}

#[test]
fn endpoint_parsing() {
    assert!(StoreEndpoint::parse("ftp://x").is_err());
    assert!(StoreEndpoint::parse("http://").is_err());
    assert!(StoreEndpoint::parse("file://").is_err());
    assert!(StoreEndpoint::parse("http://host:9000/bucket").is_err());
    let err =
        StoreEndpoint::parse("https://AKID:topsecret@cos.x.myqcloud.com").expect_err("userinfo");
    assert!(!err.contains("topsecret"), "{err}");
    assert_eq!(
        StoreEndpoint::parse("https://s3.example.com/").expect("valid"),
        StoreEndpoint::S3 {
            url: "https://s3.example.com".into()
        }
    );
}

#[test]
fn content_type_never_implies_decompression() {
    assert_eq!(content_type_for("gzip", "a.jsonl.gz"), "application/gzip");
    assert_eq!(content_type_for("zstd", "a.jsonl.zst"), "application/zstd");
    assert_eq!(
        content_type_for("identity", "a.jsonl"),
        "application/x-ndjson"
    );
    assert_eq!(
        content_type_for("identity", "a.parquet"),
        "application/vnd.apache.parquet"
    );
}

#[test]
fn describe_holds_no_secret() {
    let settings = StoreSettings {
        endpoint: Some(StoreEndpoint::parse("http://127.0.0.1:9000").expect("valid")),
        allowed_endpoints: Vec::new(),
        region: None,
        path_style: true,
        request_checksum: ChecksumChoice::Auto,
        payload_signing: PayloadSigning::Auto,
        part_size: 8 << 20,
        multipart_threshold: 8 << 20,
        concurrency: 4,
        credentials: Credentials::Static {
            source: "COS_SECRET_ID/COS_SECRET_KEY",
            access_key_id: proto::types::Secret::new("AKIDxyz"),
            secret_access_key: proto::types::Secret::new("s3cr3t"),
            session_token: None,
        },
    };
    let d = settings.describe();
    assert!(
        d.contains("http://127.0.0.1:9000") && d.contains("path-style") && d.contains("CRC32C"),
        "{d}"
    );
    assert!(!d.contains("s3cr3t") && !d.contains("AKIDxyz"), "{d}");
}
