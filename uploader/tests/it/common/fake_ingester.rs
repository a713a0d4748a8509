//! A fake ingester for the uploader's loop: it offers sealed segments, streams them (damaged
//! once, or refused as quarantined, if asked), and records commits and reported failures.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use proto::v1::*;
use proto::IngesterServer;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::{random_bytes, segment};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Good,
    /// The first read delivers one flipped byte; later reads are fine.
    CorruptOnce,
    /// ReadSegment fails with DATA_LOSS (the ingester quarantines it).
    DataLoss,
}

pub struct Seg {
    pub info: SegmentInfo,
    pub data: Vec<u8>,
    pub mode: Mode,
    pub reads: u32,
    pub done: bool,
}

#[derive(Default)]
pub struct Fake {
    pub segs: Mutex<Vec<Seg>>,
    pub commits: Mutex<Vec<CommitSegmentRequest>>,
    pub failures: Mutex<Vec<UploadFailure>>,
    /// Commits still to refuse with RESOURCE_EXHAUSTED, as an ingester with a full disk does.
    pub refuse_commits: Mutex<u32>,
}

/// Segment `no` of the rule `orders`: `len` random bytes, read as `mode` says.
pub fn fake_segment(no: u64, len: usize, mode: Mode) -> Seg {
    let data = random_bytes(len, no);
    Seg {
        info: SegmentInfo {
            region: "ap-guangzhou".into(),
            ..segment(no, &data)
        },
        data,
        mode,
        reads: 0,
        done: false,
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl proto::Ingester for Fake {
    async fn create_rule(
        &self,
        _: Request<CreateRuleRequest>,
    ) -> Result<Response<RuleReply>, Status> {
        unimplemented()
    }
    async fn edit_rule(&self, _: Request<EditRuleRequest>) -> Result<Response<RuleReply>, Status> {
        unimplemented()
    }
    async fn get_rule(&self, _: Request<RuleName>) -> Result<Response<RuleReply>, Status> {
        unimplemented()
    }
    async fn list_rules(
        &self,
        _: Request<ListRulesRequest>,
    ) -> Result<Response<ListRulesReply>, Status> {
        unimplemented()
    }
    async fn delete_rule(
        &self,
        _: Request<DeleteRuleRequest>,
    ) -> Result<Response<DeleteRuleReply>, Status> {
        unimplemented()
    }
    async fn pause_rule(&self, _: Request<RuleName>) -> Result<Response<RuleReply>, Status> {
        unimplemented()
    }
    async fn resume_rule(&self, _: Request<RuleName>) -> Result<Response<RuleReply>, Status> {
        unimplemented()
    }
    async fn flush_rule(&self, _: Request<RuleName>) -> Result<Response<FlushReply>, Status> {
        unimplemented()
    }
    async fn skip_entry(
        &self,
        _: Request<SkipEntryRequest>,
    ) -> Result<Response<SkipEntryReply>, Status> {
        unimplemented()
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        unimplemented()
    }
    async fn logs(&self, _: Request<LogsRequest>) -> Result<Response<LogsReply>, Status> {
        unimplemented()
    }
    async fn list_segments(
        &self,
        _: Request<RuleName>,
    ) -> Result<Response<ListSegmentsReply>, Status> {
        unimplemented()
    }

    async fn list_sealed(
        &self,
        req: Request<ListSealedRequest>,
    ) -> Result<Response<ListSealedReply>, Status> {
        let req = req.into_inner();
        let segments: Vec<SegmentInfo> = self
            .segs
            .lock()
            .expect("fake")
            .iter()
            .filter(|s| !s.done)
            .take(req.max as usize)
            .map(|s| s.info.clone())
            .collect();
        if segments.is_empty() {
            tokio::time::sleep(Duration::from_millis(u64::from(req.wait_ms).min(200))).await;
        }
        // Like an ingester older than `rules`: the uploader keeps every rule's metrics.
        Ok(Response::new(ListSealedReply {
            segments,
            rules: None,
        }))
    }

    type ReadSegmentStream = Pin<Box<dyn Stream<Item = Result<SegmentChunk, Status>> + Send>>;

    async fn read_segment(
        &self,
        req: Request<SegmentRef>,
    ) -> Result<Response<Self::ReadSegmentStream>, Status> {
        let req = req.into_inner();
        let mut segs = self.segs.lock().expect("fake");
        let seg = segs
            .iter_mut()
            .find(|s| s.info.rule == req.rule && s.info.segment_no == req.segment_no)
            .ok_or_else(|| Status::not_found("no such segment"))?;
        seg.reads += 1;
        let mut data = seg.data.clone();
        match seg.mode {
            Mode::DataLoss => {
                seg.done = true;
                return Err(Status::data_loss("segment checksum mismatch; quarantined"));
            }
            Mode::CorruptOnce if seg.reads == 1 => data[7] ^= 0x40,
            _ => {}
        }
        let chunks: Vec<Result<SegmentChunk, Status>> = data
            .chunks(64 * 1024)
            .map(|c| {
                Ok(SegmentChunk {
                    data: bytes::Bytes::copy_from_slice(c),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn commit_segment(
        &self,
        req: Request<CommitSegmentRequest>,
    ) -> Result<Response<CommitSegmentReply>, Status> {
        let req = req.into_inner();
        {
            let mut refuse = self.refuse_commits.lock().expect("fake");
            if *refuse > 0 {
                *refuse -= 1;
                return Err(Status::resource_exhausted(
                    "spool database error: IO error: No space left on device (os error 28)",
                ));
            }
        }
        let mut segs = self.segs.lock().expect("fake");
        let outcome = match segs
            .iter_mut()
            .find(|s| s.info.rule == req.rule && s.info.segment_no == req.segment_no)
        {
            Some(s) if !s.done => {
                s.done = true;
                "committed"
            }
            _ => "already_committed",
        };
        self.commits.lock().expect("fake").push(req);
        Ok(Response::new(CommitSegmentReply {
            outcome: outcome.into(),
        }))
    }

    async fn report_upload_failure(
        &self,
        req: Request<UploadFailure>,
    ) -> Result<Response<Empty>, Status> {
        self.failures.lock().expect("fake").push(req.into_inner());
        Ok(Response::new(Empty {}))
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

/// Serves `fake` on 127.0.0.1:0; its URL.
pub async fn serve_fake(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngesterServer::from_arc(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}
