# The three tdmq-backup binaries in one image:
#   tdmq-backup-ingester, tdmq-backup-uploader, tdmq-backup (ctl).
#
#   docker build -t tdmq-backup .
#   docker run -v ingester-data:/var/lib/tdmq-backup/ingester \
#     -v /etc/tdmq-backup:/etc/tdmq-backup:ro -p 127.0.0.1:7601:7601 \
#     tdmq-backup tdmq-backup-ingester --config /etc/tdmq-backup/ingester.toml --listen 0.0.0.0:7601
#   docker run -e COS_SECRET_ID -e COS_SECRET_KEY -v /etc/tdmq-backup:/etc/tdmq-backup:ro \
#     tdmq-backup tdmq-backup-uploader --config /etc/tdmq-backup/uploader.toml
#
# Inside a container, `listen` must be 0.0.0.0:PORT to be reachable through a published port;
# then set auth_token_file (see docs/user-guide.md; without it, or allow_unauthenticated = true,
# the daemon refuses to start) and publish the port on a private address.
#
# Note: this file was written without Docker available in the development environment, so it
# has not been built here; the build steps are the same ones CI runs (`cargo build --release`).

FROM rust:1.95-bookworm AS builder
# protoc for the build scripts (ours and the pulsar crate's). .cargo/config.toml points PROTOC at
# scripts/protoc, which uses the copy vendored by the protoc-bin-vendored crate and falls back to
# this one on architectures the vendored crate does not cover.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p tdmq-backup-ingester -p tdmq-backup-uploader -p tdmq-backup-ctl \
 && mkdir -p /out \
 && cp target/release/tdmq-backup-ingester target/release/tdmq-backup-uploader \
       target/release/tdmq-backup /out/

FROM debian:bookworm-slim
# ca-certificates: TLS to COS / S3 and to pulsar+ssl:// brokers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tdmq-backup --shell /usr/sbin/nologin tdmq-backup \
 && mkdir -p /var/lib/tdmq-backup/ingester /var/lib/tdmq-backup/uploader /etc/tdmq-backup \
 && chown -R tdmq-backup:tdmq-backup /var/lib/tdmq-backup \
 && chmod 0700 /var/lib/tdmq-backup/ingester /var/lib/tdmq-backup/uploader
COPY --from=builder /out/ /usr/local/bin/
COPY examples/ /usr/share/doc/tdmq-backup/examples/
COPY docs/ /usr/share/doc/tdmq-backup/
USER tdmq-backup
WORKDIR /var/lib/tdmq-backup
VOLUME ["/var/lib/tdmq-backup/ingester", "/var/lib/tdmq-backup/uploader"]
# gRPC (ingester, uploader) and /metrics (ingester, uploader).
EXPOSE 7601 7602 7611 7612
CMD ["tdmq-backup-ingester", "--help"]
