//! Commands sent to several ingesters (`--ingester A --ingester B`, or `--ingester A,B`): each
//! ingester gets the command in turn, and the answers are put together in one report. One that
//! fails does not stop the others; the command then prints what it has and exits with the
//! first failure's status, naming every ingester that failed.

use std::future::Future;

use serde_json::{json, Value};

use super::Ctx;
use crate::cli::LogsArgs;
use crate::client::{one_line, Daemon};
use crate::exit::{self, Exit, Partial};
use crate::output::{self, Report};

/// A copy of `ctx` that talks to `ingester` only.
fn for_ingester(ctx: &Ctx, ingester: &Daemon) -> Ctx {
    Ctx {
        ingester: ingester.clone(),
        ingesters: vec![ingester.clone()],
        ..ctx.clone()
    }
}

/// What one ingester answered: its report, or the error and its exit status.
struct Answer {
    url: String,
    outcome: Result<Report, (Exit, String)>,
}

/// Runs `command` once per ingester, in the order they were listed.
async fn ask_each<F, Fut>(ctx: &Ctx, command: F) -> Vec<Answer>
where
    F: Fn(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<Report>>,
{
    let mut answers = Vec::with_capacity(ctx.ingesters.len());
    for daemon in &ctx.ingesters {
        let outcome = match command(for_ingester(ctx, daemon)).await {
            Ok(report) => Ok(report),
            Err(e) => Err((exit::of(&e), one_line(&format!("{e:#}")))),
        };
        answers.push(Answer {
            url: daemon.url.clone(),
            outcome,
        });
    }
    answers
}

/// Who failed and why, as `finish` reports it: (exit status, "ingester URL: why").
type Failures = Vec<(Exit, String)>;

fn failures_of(answers: &[Answer]) -> Failures {
    answers
        .iter()
        .filter_map(|a| match &a.outcome {
            Err((exit, error)) => Some((*exit, format!("ingester {}: {error}", a.url))),
            Ok(_) => None,
        })
        .collect()
}

/// `report`, or a [`Partial`] failure naming each of the `asked` daemons that failed.
fn finish(report: Report, failures: Failures, asked: usize) -> anyhow::Result<Report> {
    let Some((first_exit, _)) = failures.first() else {
        return Ok(report);
    };
    let error = format!(
        "{} of {asked} ingesters failed: {}",
        failures.len(),
        failures
            .iter()
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    Err(Partial {
        report,
        exit: *first_exit,
        error,
    }
    .into())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("  {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A rule command or `segments`: each ingester's answer under its URL.
/// JSON: `{"ingesters": [{"url", "ok": true, "result": …} | {"url", "ok": false, "error", "exit"}]}`.
pub async fn each_ingester<F, Fut>(ctx: &Ctx, command: F) -> anyhow::Result<Report>
where
    F: Fn(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<Report>>,
{
    let answers = ask_each(ctx, command).await;
    let mut docs = Vec::new();
    let mut text = Vec::new();
    for a in &answers {
        match &a.outcome {
            Ok(report) => {
                docs.push(json!({ "url": a.url, "ok": true, "result": report.json }));
                text.push(format!("ingester {}:\n{}", a.url, indent(&report.text)));
            }
            Err((exit, error)) => {
                docs.push(
                    json!({ "url": a.url, "ok": false, "error": error, "exit": exit.code() }),
                );
                text.push(format!("ingester {}: error: {error}", a.url));
            }
        }
    }
    let report = Report {
        json: json!({ "ingesters": docs }),
        text: text.join("\n\n"),
    };
    finish(report, failures_of(&answers), answers.len())
}

/// `logs NAME` from every ingester: the entries of all of them, newest first, each with the
/// `ingester` it came from (JSON), and a table per ingester (text).
pub async fn logs(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<Report> {
    let answers = ask_each(ctx, |one| {
        let args = args.clone();
        async move { super::logs::run(&one, args).await }
    })
    .await;
    let mut entries: Vec<Value> = Vec::new();
    let mut text = Vec::new();
    for a in &answers {
        match &a.outcome {
            Ok(report) => {
                if let Some(list) = report.json["entries"].as_array() {
                    entries.extend(list.iter().map(|e| {
                        let mut e = e.clone();
                        e["ingester"] = Value::String(a.url.clone());
                        e
                    }));
                }
                text.push(format!("ingester {}:\n{}", a.url, indent(&report.text)));
            }
            Err((_, error)) => text.push(format!("ingester {}: error: {error}", a.url)),
        }
    }
    // RFC 3339 UTC with milliseconds: the strings sort as the times do.
    entries.sort_by(|a, b| b["at"].as_str().cmp(&a["at"].as_str()));
    let report = Report {
        json: json!({ "entries": entries }),
        text: text.join("\n\n"),
    };
    finish(report, failures_of(&answers), answers.len())
}

/// `status [NAME]` of every ingester and the uploader, asked at once: one line per ingester,
/// the uploader's, and one table of every ingester's rules (a rule's name followed by the
/// ingester it runs on). JSON: `ingesters` (each as `status` shows one `ingester`), `uploader`,
/// and `rules`, each with the `ingester` URL it came from.
pub async fn status(ctx: &Ctx, name: Option<String>) -> anyhow::Result<Report> {
    let replies = futures::future::join_all(ctx.ingesters.iter().map(|daemon| {
        let one = for_ingester(ctx, daemon);
        let name = name.clone();
        async move { super::status::ingester_status(&one, name).await }
    }));
    let (replies, uploader) = tokio::join!(replies, super::status::uploader_status(ctx));

    let mut ingesters_json = Vec::new();
    let mut rules_json = Vec::new();
    let mut lines = Vec::new();
    let mut merged = proto::v1::StatusReply::default();
    let mut failures = Failures::new();
    for (daemon, reply) in ctx.ingesters.iter().zip(replies) {
        let url = daemon.url.as_str();
        match reply {
            Ok(reply) => {
                let mut line = format!(
                    "ingester {url}: version {}, up {}",
                    reply.version,
                    output::secs(reply.uptime_secs)
                );
                if reply.spool_disk_full {
                    line.push_str(", SPOOL DISK FULL (consumption paused)");
                }
                lines.push(line);
                ingesters_json.push(output::ingester_json(url, &reply));
                for rule in &reply.rules {
                    let mut doc = output::rule_status_json(rule);
                    doc["ingester"] = Value::String(url.into());
                    rules_json.push(doc);
                    let mut row = rule.clone();
                    row.name = format!("{} ({})", rule.name, host_port(url));
                    merged.rules.push(row);
                }
            }
            Err(e) => {
                let error = one_line(&format!("{e:#}"));
                lines.push(format!("ingester {url}: {error}"));
                ingesters_json.push(json!({ "reachable": false, "url": url, "error": error }));
                failures.push((exit::of(&e), format!("ingester {url}: {error}")));
            }
        }
    }
    // The uploader's lines and the rules table as `status` renders them for one ingester,
    // without that one ingester's line.
    let body = output::status_text("", &merged, &ctx.uploader.url, &uploader, &ctx.layout);
    let body = body.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    let report = Report {
        json: json!({
            "ingesters": ingesters_json,
            "uploader": output::uploader_json(&ctx.uploader.url, &uploader),
            "rules": rules_json,
        }),
        text: format!("{}\n{body}", lines.join("\n")),
    };
    match (finish(report, failures, ctx.ingesters.len()), uploader) {
        // Every ingester answered; the uploader did not (it is shown in the report).
        (Ok(report), Err(error)) => Err(Partial {
            report,
            exit: Exit::Unreachable,
            error,
        }
        .into()),
        (result, _) => result,
    }
}

/// `host:port` of a URL, for a table cell.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.trim_end_matches('/')
}
