//! `verify NAME [--from T] [--to T] [--deep]`: the uploader checks the rule's backup against
//! its manifest and streams what it finds; exit 0 when all is well, 3 with problems.

use proto::v1::{verify_event, VerifyProblem, VerifyRequest, VerifySummary};
use serde_json::{json, Value};

use super::Ctx;
use crate::client::CallResult as _;
use crate::exit::{Exit, Partial};
use crate::output::{size, Report};
use crate::progress::Progress;
use crate::table::{self, Column, Layout};

pub struct VerifyArgs {
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub deep: bool,
}

pub async fn run(ctx: &Ctx, args: VerifyArgs) -> anyhow::Result<Report> {
    for t in [&args.from, &args.to].into_iter().flatten() {
        if chrono::DateTime::parse_from_rfc3339(t).is_err() {
            return Err(crate::exit::error(
                Exit::Failure,
                format!("{t:?} is not an RFC 3339 time (like 2026-11-24T02:00:00Z)"),
            ));
        }
    }
    let mut uploader = ctx.uploader().await?;
    let mut stream = uploader
        .verify(VerifyRequest {
            rule: args.name.clone(),
            from: args.from.clone().unwrap_or_default(),
            to: args.to.clone().unwrap_or_default(),
            deep: args.deep,
        })
        .await
        .on(&ctx.uploader)?;
    let mut progress = Progress::start(&format!("verifying {}: reading the manifest", args.name));
    let mut problems = Vec::new();
    let mut summary: Option<VerifySummary> = None;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(status) => {
                progress.finish();
                return Err(ctx.uploader.call_error(status));
            }
        };
        match event.event {
            Some(verify_event::Event::Progress(p)) => {
                let text = match p.phase.as_str() {
                    "reading" => format!(
                        "verifying {}: read {}/{} objects ({}), {} problems",
                        args.name,
                        p.done,
                        p.total,
                        size(p.bytes_read),
                        problems.len()
                    ),
                    phase => format!("verifying {}: {phase}", args.name),
                };
                progress.update(&text);
            }
            Some(verify_event::Event::Problem(p)) => problems.push(p),
            Some(verify_event::Event::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    progress.finish();
    let summary = summary.ok_or_else(|| {
        crate::exit::error(
            Exit::Unreachable,
            format!(
                "the uploader at {} ended verify without a summary",
                ctx.uploader.url
            ),
        )
    })?;
    let report = Report {
        json: verify_json(&summary, &problems),
        text: verify_text(&summary, &problems, &ctx.layout),
    };
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(anyhow::Error::new(Partial {
            report,
            exit: Exit::Problems,
            error: format!(
                "verify found {} problem{} in the backup of {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                summary.rule
            ),
        }))
    }
}

/// `{"rule", "objects", "messages", "problems": [{"kind", "key", "detail", ...}]}`.
pub fn verify_json(s: &VerifySummary, problems: &[VerifyProblem]) -> Value {
    json!({
        "rule": s.rule,
        "objects": s.objects,
        "messages": s.messages,
        "problems": problems.iter().map(problem_json).collect::<Vec<_>>(),
        "bucket": s.bucket,
        "prefix": s.prefix,
        "deep": s.deep,
        "requests": s.requests,
        "bytes_read": s.bytes_read,
        "elapsed_ms": s.elapsed_ms,
    })
}

fn problem_json(p: &VerifyProblem) -> Value {
    let mut v = json!({ "kind": p.kind, "key": p.key, "detail": p.detail });
    if p.has_partition {
        v["partition"] = json!(p.partition);
        v["first_id"] = json!(p.first_id);
        v["last_id"] = json!(p.last_id);
    }
    v
}

const PROBLEM_COLUMNS: [Column; 3] = [
    Column::keep("KIND"),
    Column::middle("KEY"),
    Column::end("DETAIL"),
];

pub fn verify_text(s: &VerifySummary, problems: &[VerifyProblem], layout: &Layout) -> String {
    let how = if s.deep { "read and parsed" } else { "checked" };
    let head = format!(
        "{}: {how} {} objects ({} messages) in {}/{}, {} requests, {}",
        s.rule,
        s.objects,
        s.messages,
        s.bucket,
        s.prefix,
        s.requests,
        crate::output::millis(s.elapsed_ms)
    );
    if problems.is_empty() {
        return format!("{head}\nno problems found");
    }
    let rows: Vec<Vec<String>> = problems
        .iter()
        .map(|p| vec![p.kind.clone(), p.key.clone(), p.detail.clone()])
        .collect();
    format!(
        "{head}\n{} problems:\n{}",
        problems.len(),
        table::render(&PROBLEM_COLUMNS, &rows, layout)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_contracts_keys_and_id_ranges_when_there_are_some() {
        let s = VerifySummary {
            rule: "orders".into(),
            objects: 2,
            messages: 20,
            ..VerifySummary::default()
        };
        let problems = [
            VerifyProblem {
                kind: "missing".into(),
                key: "p/a.jsonl.gz".into(),
                detail: "not in the bucket".into(),
                ..VerifyProblem::default()
            },
            VerifyProblem {
                kind: "gap".into(),
                key: "p/b.jsonl.gz".into(),
                detail: "entries 3:10..3:11".into(),
                has_partition: true,
                partition: 0,
                first_id: "3:9:0:-1".into(),
                last_id: "3:12:0:-1".into(),
            },
        ];
        let v = verify_json(&s, &problems);
        assert_eq!(v["rule"], "orders");
        assert_eq!(v["objects"], 2);
        assert_eq!(v["messages"], 20);
        assert_eq!(
            v["problems"][0],
            json!({"kind": "missing", "key": "p/a.jsonl.gz", "detail": "not in the bucket"})
        );
        assert_eq!(v["problems"][1]["partition"], 0);
        assert_eq!(v["problems"][1]["first_id"], "3:9:0:-1");
        let text = verify_text(&s, &problems, &Layout::default());
        assert!(
            text.contains("2 problems") && text.contains("p/b.jsonl.gz"),
            "{text}"
        );
        assert!(verify_text(&s, &[], &Layout::default()).ends_with("no problems found"));
    }
}
