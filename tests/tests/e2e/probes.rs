//! Probes and discovery on the real daemons: `grpc.health.v1.Health` (what Kubernetes' `grpc`
//! probes and grpc_health_probe ask), server reflection (what grpcurl asks), `/healthz` and
//! `/readyz` on the metrics port, all without the control-plane token; and readiness that follows
//! the facts: the uploader is not ready while the ingester or the store cannot be reached.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::http::{self, HttpReply};
use harness::{produce, sample_messages, FaultMode, FaultProxy};
use proto::v1;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha;

use crate::util::{unique_topic, Extra, Stack};

const INGESTER: &str = "tdmq_backup.v1.Ingester";
const UPLOADER: &str = "tdmq_backup.v1.Uploader";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
/// How long a change of readiness may take to show (the uploader lists every second, and backs
/// off at most `--max-backoff 1s` while the ingester is away).
const FOLLOW: Duration = Duration::from_secs(30);

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A health client that sends no token: what a probe is.
async fn health(url: &str) -> anyhow::Result<HealthClient<Channel>> {
    Ok(HealthClient::new(channel(url).await?))
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> anyhow::Result<ServingStatus> {
    let reply = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .with_context(|| format!("Health/Check {service:?}"))?;
    Ok(ServingStatus::try_from(reply.get_ref().status)?)
}

/// Polls Health/Check until it answers `want`, or fails after `timeout` with the last answer.
async fn wait_for_status(
    client: &mut HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = check(client, service).await?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Health/Check {service:?} still {got:?} after {timeout:?}, not {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET path` until `accept` takes the reply, or fails after `timeout` with the last one.
async fn wait_for_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    accept: impl Fn(&HttpReply) -> bool,
) -> anyhow::Result<HttpReply> {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = http::get(addr, path).await?;
        if accept(&reply) {
            return Ok(reply);
        }
        if Instant::now() > deadline {
            bail!("GET {path} still answers {reply:?} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next message of a Health/Watch stream, within `timeout`; `None` when the stream ended.
async fn next_watched(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    timeout: Duration,
) -> anyhow::Result<Option<ServingStatus>> {
    let message = tokio::time::timeout(timeout, watch.message())
        .await
        .context("Health/Watch sent nothing")??;
    message
        .map(|m| ServingStatus::try_from(m.status))
        .transpose()
        .map_err(Into::into)
}

/// What reflection v1 lists, and whether it describes `symbol` (the file holding it).
async fn reflect_v1(url: &str, symbol: &str) -> anyhow::Result<(BTreeSet<String>, Vec<u8>)> {
    let mut client = ServerReflectionClient::new(channel(url).await?);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(symbol.to_string()),
    ]
    .map(|request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut replies = client
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .context("ServerReflectionInfo (v1)")?
        .into_inner();
    let mut services = BTreeSet::new();
    let mut file = Vec::new();
    while let Some(reply) = replies.message().await? {
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                services.extend(list.service.into_iter().map(|s| s.name));
            }
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                file = files.file_descriptor_proto.concat();
            }
            other => bail!("unexpected reflection answer {other:?}"),
        }
    }
    Ok((services, file))
}

/// What reflection v1alpha lists (older tools ask it).
async fn reflect_v1alpha(url: &str) -> anyhow::Result<BTreeSet<String>> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(url).await?);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .context("ServerReflectionInfo (v1alpha)")?
        .into_inner();
    match replies.message().await? {
        Some(v1alpha::ServerReflectionResponse {
            message_response: Some(MessageResponse::ListServicesResponse(list)),
            ..
        }) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => bail!("unexpected reflection answer {other:?}"),
    }
}

fn metrics_listen() -> Vec<String> {
    vec!["--metrics-listen".into(), "127.0.0.1:0".into()]
}

async fn metrics_addr(daemon: &mut Option<harness::Daemon>) -> anyhow::Result<SocketAddr> {
    daemon
        .as_mut()
        .context("the daemon is not running")?
        .wait_metrics_addr(Duration::from_secs(20))
        .await
}

/// Both daemons answer health checks, reflection and `/healthz`/`/readyz`; the uploader goes
/// NOT_SERVING (gRPC and HTTP, naming the ingester) while the ingester is killed and SERVING
/// again once it is back; a Watch sees each change, and ends when the uploader shuts down
/// instead of holding the shutdown up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_daemons_answer_probes_and_the_uploader_follows_the_ingester() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.ingester_extra = Extra {
        args: metrics_listen(),
        env: Vec::new(),
    };
    let mut uploader_args = metrics_listen();
    uploader_args.extend(["--max-backoff".into(), "1s".into()]);
    stack.uploader_extra = Extra {
        args: uploader_args,
        env: Vec::new(),
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let ingester_http = metrics_addr(&mut stack.ingester).await?;
    let uploader_http = metrics_addr(&mut stack.uploader).await?;

    for (url, own, other) in [
        (stack.ingester_url(), INGESTER, UPLOADER),
        (stack.uploader_url(), UPLOADER, INGESTER),
    ] {
        let mut client = health(&url).await?;
        // The uploader is ready once it has reached the ingester: moments after start.
        wait_for_status(&mut client, "", ServingStatus::Serving, FOLLOW).await?;
        assert_eq!(check(&mut client, own).await?, ServingStatus::Serving);
        let err = client
            .check(HealthCheckRequest {
                service: other.into(),
            })
            .await
            .expect_err("a service this daemon does not serve");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

        let expected: BTreeSet<String> = [own, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]
            .map(String::from)
            .into();
        let (listed, file) = reflect_v1(&url, own).await?;
        assert_eq!(listed, expected, "reflection v1 of {own}");
        assert_eq!(
            reflect_v1alpha(&url).await?,
            expected,
            "reflection v1alpha of {own}"
        );
        // The schema itself, so that grpcurl can describe and call the service.
        assert!(
            String::from_utf8_lossy(&file).contains("tdmq_backup/v1/"),
            "reflection serves no descriptor of {own}"
        );
    }
    for addr in [ingester_http, uploader_http] {
        let live = http::get(addr, "/healthz").await?;
        assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
        let ready = http::get(addr, "/readyz").await?;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    }

    let mut uploader = health(&stack.uploader_url()).await?;
    let mut watch = uploader
        .watch(HealthCheckRequest {
            service: UPLOADER.into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        next_watched(&mut watch, FOLLOW).await?,
        Some(ServingStatus::Serving)
    );

    // The ingester goes away: the uploader is not ready, and says why.
    stack.ingester.take().context("the ingester")?.kill9()?;
    assert_eq!(
        next_watched(&mut watch, FOLLOW).await?,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(check(&mut uploader, "").await?, ServingStatus::NotServing);
    let not_ready = http::get(uploader_http, "/readyz").await?;
    assert_eq!(
        (not_ready.status, not_ready.body.as_str()),
        (503, "not ready: ingester unreachable\n")
    );
    let live = http::get(uploader_http, "/healthz").await?;
    assert_eq!(live.status, 200, "still alive: {live:?}");

    // Back on its port: ready again.
    stack.start_ingester().await?;
    assert_eq!(
        next_watched(&mut watch, FOLLOW).await?,
        Some(ServingStatus::Serving)
    );
    wait_for_http(uploader_http, "/readyz", FOLLOW, |r| r.status == 200).await?;
    let mut ingester = health(&stack.ingester_url()).await?;
    assert_eq!(
        check(&mut ingester, INGESTER).await?,
        ServingStatus::Serving
    );

    // SIGTERM with the Watch still open: it hears NOT_SERVING, ends, and the uploader exits
    // promptly (an open Watch would otherwise hold the graceful stop up for good).
    let daemon = stack.uploader.as_mut().context("the uploader")?;
    daemon.terminate()?;
    assert_eq!(
        next_watched(&mut watch, FOLLOW).await?,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        next_watched(&mut watch, FOLLOW).await?,
        None,
        "the watch ends"
    );
    let exited = daemon.wait_timeout_async(Duration::from_secs(15)).await?;
    assert!(
        exited.is_some_and(|status| status.success()),
        "the uploader did not stop cleanly within 15 s with a health watch open: {exited:?}"
    );
    Ok(())
}

/// Probes carry no token: with a control-plane token required, Health/Check and reflection
/// answer without one (or with a wrong one) on both daemons, while every real call without it
/// is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_need_no_token_and_real_calls_still_do() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let token = stack.path("control.token");
    std::fs::write(&token, "probe-test-control-token\n")?;
    let with_token = Extra {
        args: vec!["--auth-token-file".into(), token.to_string_lossy().into()],
        env: Vec::new(),
    };
    stack.ingester_extra = with_token.clone();
    stack.uploader_extra = with_token;
    stack.start_ingester().await?;
    stack.start_uploader().await?;

    for (url, own) in [
        (stack.ingester_url(), INGESTER),
        (stack.uploader_url(), UPLOADER),
    ] {
        let mut client = health(&url).await?;
        // SERVING on the uploader also shows it reaches the ingester with its own token.
        wait_for_status(&mut client, "", ServingStatus::Serving, FOLLOW).await?;
        assert_eq!(check(&mut client, own).await?, ServingStatus::Serving);
        let (listed, _) = reflect_v1(&url, own).await?;
        assert!(listed.contains(own), "{listed:?}");

        // A stale token on a probe does not matter either.
        let wrong = proto::auth::SendToken::new(Some(&proto::types::Secret::new("wrong")))?;
        let mut stale = HealthClient::with_interceptor(channel(&url).await?, wrong);
        let reply = stale.check(HealthCheckRequest::default()).await?;
        assert_eq!(reply.get_ref().status, ServingStatus::Serving as i32);
    }

    let refused = proto::IngesterClient::new(channel(&stack.ingester_url()).await?)
        .status(v1::StatusRequest::default())
        .await
        .expect_err("Status without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = proto::IngesterClient::new(channel(&stack.ingester_url()).await?)
        .list_sealed(v1::ListSealedRequest::default())
        .await
        .expect_err("ListSealed without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = proto::UploaderClient::new(channel(&stack.uploader_url()).await?)
        .uploader_status(v1::UploaderStatusRequest::default())
        .await
        .expect_err("UploaderStatus without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // ... and the token opens them: the refusal was about the token.
    stack.ctl_token_file = Some(token);
    let out = stack.ctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    Ok(())
}

/// The store cannot be reached (connections refused): the uploader's next upload says so and it
/// is not ready, naming the store; once the store is back the retry stores the segment and it is
/// ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uploader_is_not_ready_while_the_store_is_unreachable() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let proxy = FaultProxy::start(stack.s3.addr())?;
    stack.store_endpoint = Some(proxy.endpoint());
    let mut uploader_args = metrics_listen();
    uploader_args.extend(["--max-backoff".into(), "1s".into()]);
    stack.uploader_extra = Extra {
        args: uploader_args,
        env: Vec::new(),
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let uploader_http = metrics_addr(&mut stack.uploader).await?;
    let mut uploader = health(&stack.uploader_url()).await?;
    // Nothing uploaded yet: the store is not known to be unreachable.
    wait_for_status(&mut uploader, "", ServingStatus::Serving, FOLLOW).await?;

    proxy.set_mode(FaultMode::Refuse);
    let topic = unique_topic("probe-store");
    let messages = sample_messages(100, 41);
    produce(
        &stack.pulsar.url(),
        &format!("persistent://public/default/{topic}"),
        &messages,
        true,
    )
    .await?;
    stack.create_rule(
        "probe-store",
        &topic,
        &["--max-messages", "50", "--start", "earliest"],
    )?;
    let not_ready = wait_for_http(uploader_http, "/readyz", Duration::from_secs(60), |r| {
        r.status == 503
    })
    .await?;
    assert_eq!(not_ready.body, "not ready: store unreachable\n");
    assert_eq!(
        check(&mut uploader, UPLOADER).await?,
        ServingStatus::NotServing
    );

    proxy.set_mode(FaultMode::Pass);
    wait_for_status(
        &mut uploader,
        "",
        ServingStatus::Serving,
        Duration::from_secs(60),
    )
    .await?;
    stack
        .wait_until_backed_up("probe-store", 100, Duration::from_secs(90))
        .await?;
    let ready = http::get(uploader_http, "/readyz").await?;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    Ok(())
}
