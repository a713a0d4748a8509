//! The uploader's side of the segment hand-off RPCs that read: connecting, listing sealed
//! segments and streaming one segment's bytes. (Commits and failure reports: `committer`.)

use std::time::Duration;

use futures::StreamExt;
use proto::auth::SendToken;
use proto::v1::{ListSealedReply, ListSealedRequest, SegmentInfo, SegmentRef};
use proto::IngesterClient;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::backoff::Backoff;
use crate::error::{error_chain, status_text, UploadError};
use crate::status::StatusState;
use crate::store::Body;

/// Every call carries the control-plane token when one is configured.
pub type Client = IngesterClient<InterceptedService<Channel, SendToken>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to the long-poll wait: a ListSealed that takes longer than this is a hung ingester.
const LIST_GRACE: Duration = Duration::from_secs(30);
/// A segment stream that delivers nothing for this long is given up (and retried later).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Segment chunks are the ingester's choice; allow generous ones.
const MAX_MESSAGE: usize = 64 << 20;

/// Connects, retrying with backoff (shown in the status) until it works or shutdown is asked.
pub async fn connect(
    url: &str,
    tls: Option<ClientTlsConfig>,
    auth: &SendToken,
    backoff: Backoff,
    status: &StatusState,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Client>, UploadError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| UploadError::config("ingester", format!("{url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20));
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls)
            .map_err(|e| UploadError::config("ingester_ca", error_chain(&e)))?,
        None => endpoint,
    };
    let mut attempt = 0u32;
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        match endpoint.connect().await {
            Ok(channel) => {
                status.ingester_reachable(url);
                tracing::info!(ingester = url, "connected to the ingester");
                return Ok(Some(
                    IngesterClient::with_interceptor(channel, auth.clone())
                        .max_decoding_message_size(MAX_MESSAGE),
                ));
            }
            Err(err) => {
                attempt = attempt.saturating_add(1);
                let text = error_chain(&err);
                let delay = backoff.delay_now(attempt);
                status.ingester_unreachable(url, &text);
                tracing::warn!(ingester = url, error = %text, retry_in = ?delay, "ingester unreachable");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// A client that connects on its first call (and again after a broken connection): for the
/// Uploader service's own calls to the ingester (verify asks it for the rule).
pub fn lazy(
    url: &str,
    tls: Option<ClientTlsConfig>,
    auth: &SendToken,
) -> Result<Client, UploadError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| UploadError::config("ingester", format!("{url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(LIST_GRACE);
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls)
            .map_err(|e| UploadError::config("ingester_ca", error_chain(&e)))?,
        None => endpoint,
    };
    Ok(
        IngesterClient::with_interceptor(endpoint.connect_lazy(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE),
    )
}

/// Sealed segments, oldest first, and (from ingesters that send them) the names of the rules
/// running; long-polls up to `wait_ms` when none is ready.
pub async fn list_sealed(
    client: &mut Client,
    max: u32,
    wait_ms: u32,
) -> Result<ListSealedReply, UploadError> {
    let call = client.list_sealed(ListSealedRequest { max, wait_ms });
    let deadline = Duration::from_millis(u64::from(wait_ms)) + LIST_GRACE;
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(UploadError::Ingester(format!(
            "ListSealed: {}",
            status_text(&status)
        ))),
        Err(_) => Err(UploadError::Ingester(format!(
            "ListSealed: no answer in {deadline:?}"
        ))),
    }
}

/// The segment's bytes as a [`Body`]. DATA_LOSS (at the start or mid-stream) means the ingester
/// found the file damaged and quarantined it.
pub async fn read_segment(client: &mut Client, seg: &SegmentInfo) -> Result<Body, UploadError> {
    let request = SegmentRef {
        rule: seg.rule.clone(),
        segment_no: seg.segment_no,
    };
    let call = client.read_segment(request);
    let stream = match tokio::time::timeout(STALL_TIMEOUT, call).await {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(status)) => return Err(read_error(seg, &status)),
        Err(_) => {
            return Err(UploadError::Ingester(format!(
                "ReadSegment: no answer in {STALL_TIMEOUT:?}"
            )))
        }
    };
    let rule = seg.rule.clone();
    let segment_no = seg.segment_no;
    let body = futures::stream::unfold(Some(stream), move |state| {
        let rule = rule.clone();
        async move {
            let mut stream = state?;
            match tokio::time::timeout(STALL_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk.data), Some(stream))),
                Ok(Ok(None)) => None,
                Ok(Err(status)) => {
                    let seg = SegmentInfo {
                        rule,
                        segment_no,
                        ..SegmentInfo::default()
                    };
                    Some((Err(read_error(&seg, &status)), None))
                }
                Err(_) => Some((
                    Err(UploadError::Ingester(format!(
                        "ReadSegment: stream stalled for {STALL_TIMEOUT:?}"
                    ))),
                    None,
                )),
            }
        }
    });
    Ok(body.boxed())
}

fn read_error(seg: &SegmentInfo, status: &tonic::Status) -> UploadError {
    if status.code() == proto::wire::QUARANTINED {
        UploadError::Quarantined {
            rule: seg.rule.clone(),
            segment_no: seg.segment_no,
            message: status.message().to_string(),
        }
    } else {
        UploadError::Ingester(format!("ReadSegment: {}", status_text(status)))
    }
}
