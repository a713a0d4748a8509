//! `status [NAME]`: both daemons' health and each rule's progress. A daemon that cannot be
//! reached is shown with why, next to what the other one says (that is exactly the situation an
//! operator runs `status` to diagnose), and the command then exits 5 so a script notices.

use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use proto::v1::{StatusRequest, UploaderStatusReply, UploaderStatusRequest};
use serde_json::json;

use super::Ctx;
use crate::cli::OutputFormat;
use crate::client::{self, one_line, CallResult as _};
use crate::exit::{self, Exit, Partial};
use crate::output::{status_json, status_text, uploader_json, Report};

/// ANSI: cursor home, then clear the screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// `status --watch INTERVAL`: refreshes until Ctrl-C (or until stdout is closed). The first
/// fetch must succeed (a wrong URL or rule name fails at once, exit 1); later failures are
/// shown in place of the table, and the watch goes on, because a daemon that went away is
/// exactly what someone watching wants to see.
pub async fn watch(ctx: &Ctx, name: Option<String>, every: Duration) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let redraw = ctx.format != OutputFormat::Json && stdout.is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut first = true;
    loop {
        // A daemon down still gives a page: show it, and keep watching.
        let fetched = match fetch(ctx, name.clone()).await {
            Err(e) if e.downcast_ref::<Partial>().is_some() => match e.downcast::<Partial>() {
                Ok(partial) => Ok(partial.report),
                Err(e) => Err(e),
            },
            other => other,
        };
        if first {
            if let Err(e) = fetched {
                return Err(e);
            }
        }
        let page = watch_page(ctx.format, redraw, first, every, &name, fetched);
        let mut out = stdout.lock();
        // A closed pipe (`| head`) ends the watch quietly.
        if out
            .write_all(page.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        drop(out);
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// What one refresh prints, including its separators.
fn watch_page(
    format: OutputFormat,
    redraw: bool,
    first: bool,
    every: Duration,
    name: &Option<String>,
    fetched: anyhow::Result<Report>,
) -> String {
    match format {
        OutputFormat::Json => {
            let doc = match fetched {
                Ok(report) => report.json,
                Err(e) => json!({
                    "error": one_line(&format!("{e:#}")),
                    "at": proto::types::time::rfc3339_from_millis(proto::types::time::now_millis()),
                }),
            };
            format!("{doc}\n")
        }
        OutputFormat::Table | OutputFormat::Wide | OutputFormat::Toml => {
            let body = match fetched {
                Ok(report) => report.text,
                Err(e) => format!("error: {}", one_line(&format!("{e:#}"))),
            };
            let title = format!(
                "every {}: tdmq-backup status{}    {}",
                humantime::format_duration(every),
                name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
                proto::types::time::rfc3339_from_millis(proto::types::time::now_millis()),
            );
            let lead = if redraw {
                CLEAR_SCREEN
            } else if first {
                ""
            } else {
                "\n"
            };
            format!("{lead}{title}\n{body}\n")
        }
    }
}

/// One status page: of the one ingester, or of every listed one.
async fn fetch(ctx: &Ctx, name: Option<String>) -> anyhow::Result<Report> {
    if ctx.ingesters.len() > 1 {
        super::fleet::status(ctx, name).await
    } else {
        run(ctx, name).await
    }
}

pub async fn run(ctx: &Ctx, name: Option<String>) -> anyhow::Result<Report> {
    // Ask both at once: a dead uploader costs its connect timeout, not that plus the ingester's.
    let (ingester, uploader) = tokio::join!(ingester_status(ctx, name), uploader_status(ctx));
    let ingester = match ingester {
        Ok(reply) => reply,
        Err(e) if exit::of(&e) == Exit::Unreachable => {
            // Nothing about the rules, but the uploader may still say something useful.
            let error = client::one_line(&format!("{e:#}"));
            let report = Report {
                json: json!({
                    "ingester": { "reachable": false, "url": ctx.ingester.url, "error": error },
                    "uploader": uploader_json(&ctx.uploader.url, &uploader),
                    "rules": [],
                }),
                text: unreachable_ingester_text(&error, &ctx.uploader.url, &uploader),
            };
            return Err(Partial {
                report,
                exit: Exit::Unreachable,
                error,
            }
            .into());
        }
        // A rule that does not exist, a refused token: nothing to show.
        Err(e) => return Err(e),
    };
    let report = Report {
        json: status_json(&ctx.ingester.url, &ingester, &ctx.uploader.url, &uploader),
        text: status_text(
            &ctx.ingester.url,
            &ingester,
            &ctx.uploader.url,
            &uploader,
            &ctx.layout,
        ),
    };
    match uploader {
        Ok(_) => Ok(report),
        Err(error) => Err(Partial {
            report,
            exit: Exit::Unreachable,
            error,
        }
        .into()),
    }
}

/// `status` when only the uploader could be asked.
fn unreachable_ingester_text(
    error: &str,
    uploader_url: &str,
    uploader: &Result<UploaderStatusReply, String>,
) -> String {
    let uploader_line = match uploader {
        Ok(u) => format!(
            "uploader {uploader_url}: version {}, up {}, uploaded {} segments, {} failures",
            u.version,
            crate::output::secs(u.uptime_secs),
            u.segments_uploaded,
            u.upload_failures
        ),
        Err(e) => format!("uploader {uploader_url}: {e}"),
    };
    format!("ingester: {error}\n{uploader_line}\n\nno rule status: the ingester holds the rules")
}

pub(super) async fn ingester_status(
    ctx: &Ctx,
    name: Option<String>,
) -> anyhow::Result<proto::v1::StatusReply> {
    let mut client = ctx.ingester().await?;
    client
        .status(StatusRequest { name })
        .await
        .on(&ctx.ingester)
}

/// A wedged uploader (accepts connections, never answers) must not hang `status`.
const UPLOADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The uploader's reply, or the one-line reason it could not be had.
pub(super) async fn uploader_status(ctx: &Ctx) -> Result<UploaderStatusReply, String> {
    let call = async {
        let mut client = ctx.uploader().await?;
        client
            .uploader_status(UploaderStatusRequest {})
            .await
            .on(&ctx.uploader)
    };
    match tokio::time::timeout(UPLOADER_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!(
            "the uploader at {} did not answer within {}",
            ctx.uploader.url,
            humantime::format_duration(UPLOADER_TIMEOUT)
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn watch_of(args: &[&str]) -> Result<(Option<String>, Option<Duration>), clap::Error> {
        let mut all = vec!["tdmq-backup", "status"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        match cli.command {
            Command::Status { name, watch } => Ok((name, watch)),
            other => panic!("not status: {other:?}"),
        }
    }

    #[test]
    fn watch_takes_an_optional_interval() {
        assert_eq!(watch_of(&[]).expect("parses"), (None, None));
        assert_eq!(
            watch_of(&["--watch"]).expect("parses"),
            (None, Some(Duration::from_secs(2)))
        );
        assert_eq!(
            watch_of(&["orders", "--watch", "5s"]).expect("parses"),
            (Some("orders".into()), Some(Duration::from_secs(5)))
        );
        assert_eq!(
            watch_of(&["orders", "--watch"]).expect("parses"),
            (Some("orders".into()), Some(Duration::from_secs(2)))
        );
        let e = watch_of(&["--watch", "orders"]).expect_err("not an interval");
        assert!(e.to_string().contains("status NAME --watch"), "{e}");
        assert!(watch_of(&["--watch", "0s"]).is_err());
    }

    #[test]
    fn watch_pages_are_separated_or_redrawn() {
        let ok = || {
            Ok(Report {
                json: json!({"rules": []}),
                text: "TABLE".into(),
            })
        };
        let every = Duration::from_secs(2);
        let first = watch_page(OutputFormat::Table, false, true, every, &None, ok());
        assert!(first.starts_with("every 2s: tdmq-backup status"), "{first}");
        assert!(first.ends_with("TABLE\n"), "{first}");
        let next = watch_page(OutputFormat::Table, false, false, every, &None, ok());
        assert!(next.starts_with("\nevery 2s"), "{next}");
        let tty = watch_page(OutputFormat::Table, true, false, every, &None, ok());
        assert!(tty.starts_with(CLEAR_SCREEN), "{tty}");
        let json = watch_page(OutputFormat::Json, false, false, every, &None, ok());
        assert_eq!(json, "{\"rules\":[]}\n");
        let failed = watch_page(
            OutputFormat::Json,
            false,
            false,
            every,
            &None,
            Err(anyhow::anyhow!("cannot reach the ingester")),
        );
        let v: serde_json::Value = serde_json::from_str(failed.trim()).expect("one JSON line");
        assert_eq!(v["error"], "cannot reach the ingester");
    }
}
