//! `segments NAME`: the rule's segments as the ingester holds them.

use proto::v1::RuleName;

use super::Ctx;
use crate::client::CallResult as _;
use crate::output::{segments_json, segments_text, Report};

pub async fn run(ctx: &Ctx, name: String) -> anyhow::Result<Report> {
    let mut ingester = ctx.ingester().await?;
    let reply = ingester
        .list_segments(RuleName { name })
        .await
        .on(&ctx.ingester)?;
    Ok(Report {
        json: segments_json(&reply.segments),
        text: segments_text(&reply.segments, &ctx.layout),
    })
}
