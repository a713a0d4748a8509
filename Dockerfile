# The three tdmq-backup binaries in one image:
#   tdmq-backup-ingester, tdmq-backup-uploader, tdmq-backup (ctl).
#
#   podman build -t tdmq-backup .            (or docker build; BuildKit for the cache mounts)
#   scripts/build-image.sh [--local-bases]   (the same; --local-bases without Docker Hub)
#
# Running it, with the ingester and the uploader in two containers (the uploader's `ingester` is
# the ingester container's name, never 127.0.0.1, which is the uploader's own container), the
# control-plane token, TLS and a shared volume: docs/user-guide.md, "Container image".
#
# Built (148 MB) and run with podman 4.3.1 on Debian bookworm, from local stand-ins for both base
# images (scripts/build-image.sh --local-bases: a debootstrap'd bookworm, and that plus Rust
# 1.95.0 laid out as in the official image) because Docker Hub was out of reach there: the real
# Docker Hub images, and Docker's BuildKit, have not been tried. scripts/image-smoke.sh checks an
# image: its contents, then a backup from a broker through an ingester container and an uploader
# container into a store, with the token, over gRPC and from a shared volume.

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
