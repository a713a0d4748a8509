//! `rule delete`: refused while segments are not stored unless `--drain` (store everything
//! first, showing what is left) or `--discard` (asked on a terminal, `--yes` in a script).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::bail;
use proto::v1::{DeleteRuleRequest, RuleName};
use serde_json::json;

use super::waiting::with_drain_progress;
use crate::cli::DeleteArgs;
use crate::client::CallResult as _;
use crate::commands::Ctx;
use crate::output::Report;

/// The ingester's drain timeout when `--drain-timeout` is not given.
const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub(super) async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<Report> {
    // The ingester answers a drain when it is done: up to its drain timeout (300 s by default).
    let drain_wait = match (args.drain, args.drain_timeout) {
        (false, _) => std::time::Duration::ZERO,
        (true, Some(timeout)) => timeout,
        (true, None) => DEFAULT_DRAIN_TIMEOUT,
    };
    let mut ingester = ctx.ingester_waiting(drain_wait).await?;
    if args.discard && !args.yes {
        let segments = ingester
            .list_segments(RuleName {
                name: args.name.clone(),
            })
            .await
            .on(&ctx.ingester)?
            .segments;
        let unstored = segments.iter().filter(|s| s.state != "stored").count();
        if unstored > 0 {
            confirm_discard(&args.name, unstored)?;
        }
    }
    let call = ingester.delete_rule(DeleteRuleRequest {
        name: args.name.clone(),
        drain: args.drain,
        discard: args.discard,
        drain_timeout_secs: args.drain_timeout.map(|d| d.as_secs().max(1)).unwrap_or(0),
        unsubscribe: args.unsubscribe,
    });
    let reply = if args.drain {
        with_drain_progress(ctx, &args.name, call).await
    } else {
        call.await
    }
    .on(&ctx.ingester)?;
    let mut text = format!("deleted rule {}", args.name);
    if reply.segments_discarded > 0 {
        text.push_str(&format!(
            "; discarded {} unstored segment(s) (their messages stay unacknowledged on Pulsar)",
            reply.segments_discarded
        ));
    }
    if !reply.notice.is_empty() {
        let label = if reply.unsubscribed { "" } else { "note: " };
        text.push_str(&format!("\n{label}{}", reply.notice));
    }
    Ok(Report {
        json: json!({
            "deleted": args.name,
            "segments_discarded": reply.segments_discarded,
            "unsubscribed": reply.unsubscribed,
            "notice": reply.notice,
        }),
        text,
    })
}

/// Asks on the terminal; without one, refuses (a script must say --yes explicitly).
fn confirm_discard(name: &str, unstored: usize) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "--discard would drop {unstored} unstored segment(s) of rule {name}; \
             stdin is not a terminal, so pass --yes to confirm"
        );
    }
    // The question goes to stderr: stdout carries only the command's result.
    let mut stderr = std::io::stderr();
    write!(
        stderr,
        "delete rule {name} and discard {unstored} unstored segments? [y/N] "
    )?;
    stderr.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => bail!("rule {name} not deleted"),
    }
}
