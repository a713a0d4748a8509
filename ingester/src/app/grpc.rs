//! The tonic service: translates requests to [`IngesterApp`] calls and errors to statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::{self, *};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::app::IngesterApp;
use crate::spool::CommitOutcome;

pub struct IngesterService {
    app: Arc<IngesterApp>,
}

impl IngesterService {
    pub fn new(app: Arc<IngesterApp>) -> IngesterService {
        IngesterService { app }
    }
}

fn spec_of(spec: Option<RuleSpec>) -> Result<RuleSpec, Status> {
    spec.ok_or_else(|| Status::invalid_argument("the request has no rule spec"))
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl proto::Ingester for IngesterService {
    async fn create_rule(&self, req: Request<CreateRuleRequest>) -> Reply<RuleReply> {
        let spec = spec_of(req.into_inner().spec)?;
        let rule = self.app.create_rule(&spec).await?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            notice: String::new(),
        }))
    }

    async fn edit_rule(&self, req: Request<EditRuleRequest>) -> Reply<RuleReply> {
        let req = req.into_inner();
        let unsubscribe = req.unsubscribe;
        let spec = spec_of(req.spec)?;
        let (rule, notice) = self.app.edit_rule(&spec, unsubscribe).await?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            notice,
        }))
    }

    async fn get_rule(&self, req: Request<RuleName>) -> Reply<RuleReply> {
        let rule = self.app.get_rule(&req.into_inner().name).await?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            notice: String::new(),
        }))
    }

    async fn list_rules(&self, _req: Request<ListRulesRequest>) -> Reply<ListRulesReply> {
        Ok(Response::new(ListRulesReply {
            rules: self.app.list_rules().await?,
        }))
    }

    async fn delete_rule(&self, req: Request<DeleteRuleRequest>) -> Reply<DeleteRuleReply> {
        Ok(Response::new(
            self.app.delete_rule(&req.into_inner()).await?,
        ))
    }

    async fn pause_rule(&self, req: Request<RuleName>) -> Reply<RuleReply> {
        let rule = self.app.set_paused(&req.into_inner().name, true).await?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            notice: String::new(),
        }))
    }

    async fn resume_rule(&self, req: Request<RuleName>) -> Reply<RuleReply> {
        let rule = self.app.set_paused(&req.into_inner().name, false).await?;
        Ok(Response::new(RuleReply {
            rule: Some(rule),
            notice: String::new(),
        }))
    }

    async fn flush_rule(&self, req: Request<RuleName>) -> Reply<FlushReply> {
        let closed = self.app.flush(&req.into_inner().name).await?;
        Ok(Response::new(FlushReply {
            sealed: closed.is_some(),
            segment_no: closed.unwrap_or(0),
        }))
    }

    async fn skip_entry(&self, req: Request<SkipEntryRequest>) -> Reply<SkipEntryReply> {
        let req = req.into_inner();
        let message = self.app.skip_entry(&req.name, &req.entry).await?;
        Ok(Response::new(SkipEntryReply { message }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Reply<StatusReply> {
        let req = req.into_inner();
        Ok(Response::new(
            self.app
                .status(req.name.as_deref().filter(|n| !n.is_empty()))
                .await?,
        ))
    }

    async fn logs(&self, req: Request<LogsRequest>) -> Reply<LogsReply> {
        Ok(Response::new(LogsReply {
            entries: self.app.logs(&req.into_inner())?,
        }))
    }

    async fn list_segments(&self, req: Request<RuleName>) -> Reply<ListSegmentsReply> {
        Ok(Response::new(ListSegmentsReply {
            segments: self.app.segments(&req.into_inner().name).await?,
        }))
    }

    async fn list_sealed(&self, req: Request<ListSealedRequest>) -> Reply<ListSealedReply> {
        let req = req.into_inner();
        let wait = Duration::from_millis(u64::from(req.wait_ms.min(30_000)));
        let segments = self.app.list_sealed(req.max as usize, wait).await;
        let rules = Some(self.app.rule_names().await);
        Ok(Response::new(ListSealedReply { segments, rules }))
    }

    type ReadSegmentStream =
        Pin<Box<dyn futures::Stream<Item = Result<v1::SegmentChunk, Status>> + Send + 'static>>;

    async fn read_segment(&self, req: Request<SegmentRef>) -> Reply<Self::ReadSegmentStream> {
        let req = req.into_inner();
        let rx = self.app.read_segment(&req.rule, req.segment_no).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_segment(
        &self,
        req: Request<CommitSegmentRequest>,
    ) -> Reply<CommitSegmentReply> {
        let outcome = self.app.commit(&req.into_inner()).await?;
        let outcome = match outcome {
            CommitOutcome::Committed => proto::wire::CommitOutcome::Committed,
            CommitOutcome::AlreadyCommitted => proto::wire::CommitOutcome::AlreadyCommitted,
            CommitOutcome::Covered => proto::wire::CommitOutcome::Covered,
            CommitOutcome::Trimmed => proto::wire::CommitOutcome::Trimmed,
        };
        Ok(Response::new(CommitSegmentReply {
            outcome: outcome.as_str().into(),
        }))
    }

    async fn report_upload_failure(&self, req: Request<UploadFailure>) -> Reply<Empty> {
        self.app.report_failure(&req.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn set_restore_target(
        &self,
        req: Request<RestoreTargetRequest>,
    ) -> Reply<RestoreTargetReply> {
        let partitions = self.app.restore.set(&req.into_inner()).await?;
        Ok(Response::new(RestoreTargetReply { partitions }))
    }

    async fn drop_restore_target(&self, req: Request<RestoreJobName>) -> Reply<Empty> {
        self.app.restore.drop_target(&req.into_inner().job).await?;
        Ok(Response::new(Empty {}))
    }

    async fn restore_produce(
        &self,
        req: Request<RestoreProduceRequest>,
    ) -> Reply<RestoreProduceReply> {
        let req = req.into_inner();
        let producer_name = self
            .app
            .restore
            .produce(&req.job, req.source_partition, req.messages)
            .await?;
        Ok(Response::new(RestoreProduceReply { producer_name }))
    }
}
