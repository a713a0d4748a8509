//! Commands against a fake ingester on an ephemeral port: what reaches the wire (auth header,
//! the Pulsar token, flags) and what comes back out (JSON shapes, one-line errors). The real
//! daemons are exercised by the workspace's tests/.

use std::sync::{Arc, Mutex};

use clap::Parser as _;
use proto::v1::*;
use proto::{Ingester, IngesterServer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::cli::Cli;
use crate::commands::rule::parse_rule_file;
use crate::output::Report;

#[derive(Default)]
struct Seen {
    auth: Vec<Option<String>>,
    specs: Vec<RuleSpec>,
    deletes: Vec<DeleteRuleRequest>,
    logs: Vec<LogsRequest>,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    /// When set, calls without exactly this `authorization` value are refused.
    require_auth: Option<String>,
    /// What GetRule finds (by name); nothing by default.
    stored: Option<Rule>,
}

type Reply<T> = Result<Response<T>, Status>;

impl Fake {
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut seen = self.seen.lock().map_err(|_| Status::internal("poisoned"))?;
        seen.auth.push(auth.clone());
        match &self.require_auth {
            Some(want) if auth.as_deref() != Some(want.as_str()) => {
                Err(Status::unauthenticated("missing or wrong token"))
            }
            _ => Ok(()),
        }
    }

    fn record(&self, f: impl FnOnce(&mut Seen)) -> Result<(), Status> {
        let mut seen = self.seen.lock().map_err(|_| Status::internal("poisoned"))?;
        f(&mut seen);
        Ok(())
    }
}

fn rule_from(spec: &RuleSpec) -> Rule {
    Rule {
        name: spec.name.clone(),
        topic: spec.topic.clone().unwrap_or_default(),
        window_secs: 300,
        has_token: spec.token.is_some(),
        ..Rule::default()
    }
}

#[tonic::async_trait]
impl Ingester for Fake {
    async fn create_rule(&self, req: Request<CreateRuleRequest>) -> Reply<RuleReply> {
        self.check(&req)?;
        let spec = req.into_inner().spec.unwrap_or_default();
        let rule = rule_from(&spec);
        self.record(|s| s.specs.push(spec))?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            ..RuleReply::default()
        }))
    }
    async fn edit_rule(&self, req: Request<EditRuleRequest>) -> Reply<RuleReply> {
        self.check(&req)?;
        let spec = req.into_inner().spec.unwrap_or_default();
        if spec.prefix.as_deref() == Some("bad") {
            return Err(Status::invalid_argument(
                r#"prefix "bad" must end with "/""#,
            ));
        }
        let rule = rule_from(&spec);
        self.record(|s| s.specs.push(spec))?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            ..RuleReply::default()
        }))
    }
    async fn get_rule(&self, req: Request<RuleName>) -> Reply<RuleReply> {
        self.check(&req)?;
        if let Some(rule) = self.stored.iter().find(|r| r.name == req.get_ref().name) {
            return Ok(Response::new(RuleReply {
                rule: Some(rule.clone()),
                ..RuleReply::default()
            }));
        }
        Err(Status::not_found(format!(
            "rule {:?} does not exist",
            req.into_inner().name
        )))
    }
    async fn list_rules(&self, req: Request<ListRulesRequest>) -> Reply<ListRulesReply> {
        self.check(&req)?;
        Ok(Response::new(ListRulesReply {
            rules: vec![Rule {
                name: "orders".into(),
                has_token: true,
                ..Rule::default()
            }],
        }))
    }
    async fn delete_rule(&self, req: Request<DeleteRuleRequest>) -> Reply<DeleteRuleReply> {
        self.check(&req)?;
        let req = req.into_inner();
        let discarded = if req.discard { 2 } else { 0 };
        self.record(|s| s.deletes.push(req))?;
        Ok(Response::new(DeleteRuleReply {
            segments_discarded: discarded,
            ..DeleteRuleReply::default()
        }))
    }
    async fn pause_rule(&self, req: Request<RuleName>) -> Reply<RuleReply> {
        self.check(&req)?;
        Ok(Response::new(RuleReply {
            rule: Some(Rule {
                name: req.into_inner().name,
                paused: true,
                ..Rule::default()
            }),
            ..RuleReply::default()
        }))
    }
    async fn resume_rule(&self, req: Request<RuleName>) -> Reply<RuleReply> {
        self.check(&req)?;
        Ok(Response::new(RuleReply {
            rule: Some(Rule {
                name: req.into_inner().name,
                ..Rule::default()
            }),
            ..RuleReply::default()
        }))
    }
    async fn flush_rule(&self, req: Request<RuleName>) -> Reply<FlushReply> {
        self.check(&req)?;
        Ok(Response::new(FlushReply {
            sealed: true,
            segment_no: 7,
        }))
    }
    async fn skip_entry(&self, req: Request<SkipEntryRequest>) -> Reply<SkipEntryReply> {
        self.check(&req)?;
        let req = req.into_inner();
        Ok(Response::new(SkipEntryReply {
            message: format!("entry {} skipped", req.entry),
        }))
    }
    async fn status(&self, req: Request<StatusRequest>) -> Reply<StatusReply> {
        self.check(&req)?;
        Ok(Response::new(StatusReply {
            rules: vec![RuleStatus {
                name: "orders".into(),
                state: "running".into(),
                consumer_connected: true,
                ..RuleStatus::default()
            }],
            version: "9.9.9".into(),
            uptime_secs: 61,
            spool_disk_full: false,
        }))
    }
    async fn logs(&self, req: Request<LogsRequest>) -> Reply<LogsReply> {
        self.check(&req)?;
        let req = req.into_inner();
        self.record(|s| s.logs.push(req))?;
        Ok(Response::new(LogsReply {
            entries: vec![LogEntry {
                kind: "upload_failed".into(),
                failed: true,
                message: "store unreachable".into(),
                ..LogEntry::default()
            }],
        }))
    }
    async fn list_segments(&self, req: Request<RuleName>) -> Reply<ListSegmentsReply> {
        self.check(&req)?;
        Ok(Response::new(ListSegmentsReply {
            segments: vec![SegmentInfo {
                rule: "orders".into(),
                segment_no: 3,
                state: "sealed".into(),
                ..SegmentInfo::default()
            }],
        }))
    }
    async fn list_sealed(&self, _: Request<ListSealedRequest>) -> Reply<ListSealedReply> {
        Err(Status::unimplemented("not in the fake"))
    }
    type ReadSegmentStream = tokio_stream::Empty<Result<SegmentChunk, Status>>;
    async fn read_segment(&self, _: Request<SegmentRef>) -> Reply<Self::ReadSegmentStream> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn commit_segment(&self, _: Request<CommitSegmentRequest>) -> Reply<CommitSegmentReply> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn report_upload_failure(&self, _: Request<UploadFailure>) -> Reply<Empty> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn set_restore_target(
        &self,
        _: Request<RestoreTargetRequest>,
    ) -> Result<Response<RestoreTargetReply>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn drop_restore_target(
        &self,
        _: Request<RestoreJobName>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn restore_produce(
        &self,
        _: Request<RestoreProduceRequest>,
    ) -> Result<Response<RestoreProduceReply>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Serves `fake` on 127.0.0.1:<ephemeral>; returns its URL.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngesterServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// An address nothing listens on: bound, then closed.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

async fn run(ingester: &str, uploader: &str, args: &[&str]) -> anyhow::Result<Report> {
    let mut all = vec![
        "tdmq-backup",
        "--ingester",
        ingester,
        "--uploader",
        uploader,
        "--output",
        "json",
    ];
    all.extend_from_slice(args);
    super::run(Cli::try_parse_from(all).expect("parses")).await
}

fn no_secret(report: &Report, secret: &str) {
    assert!(!report.json.to_string().contains(secret));
    assert!(!report.text.contains(secret));
}

#[tokio::test]
async fn create_sends_both_tokens_to_their_places_and_prints_neither() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl_tok = dir.path().join("ctl.tok");
    std::fs::write(&ctl_tok, "ctl-secret\n").expect("write");
    let pulsar_tok = dir.path().join("pulsar.jwt");
    std::fs::write(&pulsar_tok, "pulsar-secret\n").expect("write");
    let fake = Fake {
        require_auth: Some("Bearer ctl-secret".into()),
        ..Fake::default()
    };
    let url = serve(fake.clone()).await;
    let dead = dead_url().await;
    let ctl_s = ctl_tok.to_string_lossy().to_string();
    let pulsar_s = pulsar_tok.to_string_lossy().to_string();
    let report = run(
        &url,
        &dead,
        &[
            "--token-file",
            &ctl_s,
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
            "ap-guangzhou",
            "--max-bytes",
            "64MiB",
            "--token-file",
            &pulsar_s,
        ],
    )
    .await
    .expect("created");
    assert_eq!(report.json["name"], "orders");
    assert_eq!(report.json["has_token"], true);
    no_secret(&report, "pulsar-secret");
    no_secret(&report, "ctl-secret");
    let seen = fake.seen.lock().expect("lock");
    // CreateRule, then Status for the rule's live state: both carry the control token.
    assert_eq!(seen.auth, vec![Some("Bearer ctl-secret".to_string()); 2]);
    assert_eq!(seen.specs[0].token.as_deref(), Some("pulsar-secret"));
    assert_eq!(seen.specs[0].max_bytes.as_deref(), Some("64MiB"));
}

#[tokio::test]
async fn without_the_control_token_the_error_says_so() {
    let fake = Fake {
        require_auth: Some("Bearer x".into()),
        ..Fake::default()
    };
    let url = serve(fake).await;
    let err = run(&url, &url, &["rule", "list"])
        .await
        .expect_err("refused");
    assert_eq!(
        format!("{err:#}"),
        "the ingester refused the call: unauthenticated (check --auth-token-file)"
    );
}

#[tokio::test]
async fn status_shows_what_it_can_and_fails_when_a_daemon_is_down() {
    let url = serve(Fake::default()).await;
    let dead = dead_url().await;
    let err = run(&url, &dead, &["status"])
        .await
        .expect_err("the uploader is down");
    assert_eq!(crate::exit::of(&err), crate::exit::Exit::Unreachable);
    let partial = err
        .downcast_ref::<crate::exit::Partial>()
        .expect("a partial report");
    let report = &partial.report;
    assert_eq!(report.json["ingester"]["version"], "9.9.9");
    assert_eq!(report.json["uploader"]["reachable"], false);
    let error = report.json["uploader"]["error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(&format!("cannot reach the uploader at {dead}")),
        "{error}"
    );
    assert_eq!(report.json["rules"][0]["name"], "orders");
    assert!(report.text.contains("BACKLOG-AGE"));

    let err = run(&dead, &url, &["status"])
        .await
        .expect_err("no ingester");
    assert_eq!(crate::exit::of(&err), crate::exit::Exit::Unreachable);
    assert!(
        format!("{err:#}").starts_with(&format!("cannot reach the ingester at {dead}: ")),
        "{err:#}"
    );
    let partial = err
        .downcast_ref::<crate::exit::Partial>()
        .expect("the uploader's part is still shown");
    assert_eq!(partial.report.json["ingester"]["reachable"], false);
    assert_eq!(partial.report.json["rules"], serde_json::json!([]));
}

#[tokio::test]
async fn other_commands_shapes_and_errors() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;

    let r = run(&url, &url, &["rule", "list"]).await.expect("list");
    assert_eq!(r.json["rules"][0]["name"], "orders");

    let err = run(&url, &url, &["rule", "show", "nope"])
        .await
        .expect_err("404");
    assert_eq!(format!("{err:#}"), r#"rule "nope" does not exist"#);

    let err = run(&url, &url, &["rule", "edit", "orders", "--prefix", "bad"])
        .await
        .expect_err("invalid");
    assert_eq!(format!("{err:#}"), r#"prefix "bad" must end with "/""#);

    let r = run(&url, &url, &["rule", "pause", "orders"])
        .await
        .expect("pause");
    assert_eq!(r.json["paused"], true);

    let r = run(&url, &url, &["rule", "flush", "orders"])
        .await
        .expect("flush");
    assert_eq!(r.json, serde_json::json!({"sealed": true, "segment_no": 7}));

    let r = run(
        &url,
        &url,
        &["rule", "delete", "orders", "--discard", "--yes"],
    )
    .await
    .expect("delete");
    assert_eq!(
        r.json,
        serde_json::json!({
            "deleted": "orders",
            "segments_discarded": 2,
            "unsubscribed": false,
            "notice": "",
        })
    );

    let r = run(
        &url,
        &url,
        &[
            "logs", "orders", "--failed", "--since", "10m", "--limit", "5",
        ],
    )
    .await
    .expect("logs");
    assert_eq!(r.json["entries"][0]["kind"], "upload_failed");

    let r = run(&url, &url, &["segments", "orders"])
        .await
        .expect("segments");
    assert_eq!(r.json["segments"][0]["segment_no"], 3);

    let seen = fake.seen.lock().expect("lock");
    assert!(seen.deletes[0].discard && !seen.deletes[0].drain);
    assert_eq!(seen.logs[0].since_secs, 600);
    assert_eq!(seen.logs[0].limit, 5);
    assert!(seen.logs[0].failed_only);
    // No control-plane token was configured: none was sent.
    assert!(seen.auth.iter().all(Option::is_none));
}

#[tokio::test]
async fn apply_creates_a_missing_rule_then_edits_only_what_differs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("orders.toml");
    let text = "name = \"orders\"\nservice_url = \"pulsar://10.0.0.5:6650\"\ntopic = \"orders\"\n\
                subscription = \"backup\"\nbucket = \"backup-1250000000\"\nregion = \"ap-guangzhou\"\n\
                window = \"10m\"\n";
    std::fs::write(&file, text).expect("write");
    let file_s = file.to_string_lossy().to_string();
    let dead = dead_url().await;

    let fresh = Fake::default();
    let url = serve(fresh.clone()).await;
    let report = run(&url, &dead, &["rule", "apply", "-f", &file_s])
        .await
        .expect("created");
    assert_eq!(report.json["name"], "orders");
    let created = fresh.seen.lock().expect("lock").specs.clone();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].window.as_deref(), Some("10m"));

    // The same rule stored, with a 5m window: only the window is sent.
    let stored = proto::types::RuleSpecInput {
        window: Some("5m".into()),
        ..parse_rule_file(text, &file).expect("parses").0
    }
    .validate()
    .expect("valid")
    .to_rule(proto::types::rule::RuleState::default());
    let existing = Fake {
        stored: Some(stored.clone()),
        ..Fake::default()
    };
    let url = serve(existing.clone()).await;
    run(&url, &dead, &["rule", "apply", "-f", &file_s])
        .await
        .expect("updated");
    let edits = existing.seen.lock().expect("lock").specs.clone();
    assert_eq!(edits.len(), 1);
    let edit = &edits[0];
    assert_eq!(edit.window.as_deref(), Some("10m"), "{edit:?}");
    assert_eq!(
        (
            edit.topic.as_ref(),
            edit.bucket.as_ref(),
            edit.start.as_ref()
        ),
        (None, None, None),
        "{edit:?}"
    );

    // A file that matches the stored rule sends nothing.
    let same = Fake {
        stored: Some(
            proto::types::RuleSpecInput {
                window: Some("10m".into()),
                ..proto::types::RuleSpecInput::from(&stored)
            }
            .validate()
            .expect("valid")
            .to_rule(proto::types::rule::RuleState::default()),
        ),
        ..Fake::default()
    };
    let url = serve(same.clone()).await;
    run(&url, &dead, &["rule", "apply", "-f", &file_s])
        .await
        .expect("unchanged");
    assert!(same.seen.lock().expect("lock").specs.is_empty());
}
