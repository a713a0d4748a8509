//! `logs NAME [--failed] [--since DURATION] [--limit N]`: the rule's run history.

use std::time::Duration;

use proto::v1::LogsRequest;

use super::Ctx;
use crate::cli::LogsArgs;
use crate::client::CallResult as _;
use crate::output::{logs_json, logs_text, Report};

pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<Report> {
    let request = logs_request(args);
    let mut ingester = ctx.ingester().await?;
    let reply = ingester.logs(request).await.on(&ctx.ingester)?;
    Ok(Report {
        json: logs_json(&reply.entries),
        text: logs_text(&reply.entries),
    })
}

pub fn logs_request(args: LogsArgs) -> LogsRequest {
    LogsRequest {
        name: args.name,
        failed_only: args.failed,
        since_secs: args.since.map(since_secs).unwrap_or(0),
        limit: args.limit.unwrap_or(0),
    }
}

/// Whole seconds, rounded up: 0 means "no limit" on the wire, so `--since 500ms` must not
/// become 0 and return everything.
fn since_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}
