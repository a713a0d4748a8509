//! `status [NAME]`: both daemons' health and each rule's progress. The ingester must answer (it
//! owns the rules); an unreachable uploader is reported, not fatal, because that is exactly the
//! situation an operator runs `status` to diagnose.

use std::time::Duration;

use proto::v1::{StatusRequest, UploaderStatusReply, UploaderStatusRequest};

use super::Ctx;
use crate::client::CallResult as _;
use crate::output::{status_json, status_text, Report};

pub async fn run(ctx: &Ctx, name: Option<String>) -> anyhow::Result<Report> {
    // Ask both at once: a dead uploader costs its connect timeout, not that plus the ingester's.
    let (ingester, uploader) = tokio::join!(ingester_status(ctx, name), uploader_status(ctx));
    let ingester = ingester?;
    Ok(Report {
        json: status_json(&ctx.ingester.url, &ingester, &ctx.uploader.url, &uploader),
        text: status_text(&ctx.ingester.url, &ingester, &ctx.uploader.url, &uploader),
    })
}

async fn ingester_status(
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
async fn uploader_status(ctx: &Ctx) -> Result<UploaderStatusReply, String> {
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
