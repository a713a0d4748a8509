#!/usr/bin/env bash
# Builds the container image from the repository's Dockerfile, unchanged.
#
#   scripts/build-image.sh [--local-bases] [--engine podman|docker] [--tag NAME] [-- BUILD-ARGS...]
#
# Without --local-bases this is `podman build -t tdmq-backup .`: the engine pulls the base images
# the Dockerfile names (rust:X-bookworm, debian:bookworm-slim) from Docker Hub.
#
# --local-bases is for hosts that reach a Debian mirror but not Docker Hub. Each base image not
# already in the engine's local storage is made here, under the name the FROM line uses
# (docker.io/library/…), and labelled as a stand-in:
#   debian:bookworm-slim   `debootstrap --variant=minbase bookworm`, imported as an image
#   rust:X-bookworm        that, plus a C toolchain (a subset of what the official image's
#                          buildpack-deps base has, so a build that works here finds everything it
#                          needs there), plus the host's rustup toolchain X laid out like the
#                          official image (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo)
# It needs root, debootstrap, and rustup with toolchain X installed (installed here if missing).
# --builder-ca FILE (with --local-bases, repeatable) adds a PEM CA certificate to the rust
# stand-in's trust store, for hosts whose way to crates.io is a TLS-inspecting proxy; the
# runtime image never gets it.
# Remove the stand-ins with `podman rmi debian:bookworm-slim rust:X-bookworm` before building
# against the real images.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), BASES_WORKDIR (scratch space
# for the root filesystem and the toolchain copy; default /var/tmp/tdmq-backup-image-bases,
# emptied afterwards), RUSTUP_HOME (default ~/.rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

engine=""
tag="tdmq-backup"
local_bases=false
builder_cas=()
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --local-bases) local_bases=true ;;
    --builder-ca) builder_cas+=("${2:?--builder-ca needs a PEM file}"); shift ;;
    --engine) engine="${2:?--engine needs podman or docker}"; shift ;;
    --tag | -t) tag="${2:?--tag needs a name}"; shift ;;
    --) shift; build_args=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null; then engine=docker
  else echo "build-image.sh: neither podman nor docker is installed" >&2; exit 1
  fi
fi

# The base images, read from the Dockerfile so that this script never drifts from it.
rust_base=$(sed -n 's/^FROM \(rust:[^ ]*\).*/\1/p' Dockerfile | head -n 1)
debian_base=$(sed -n 's/^FROM \(debian:[^ ]*\).*/\1/p' Dockerfile | head -n 1)
rust_version=${rust_base#rust:}
rust_version=${rust_version%%-*}
suite=${debian_base#debian:}
suite=${suite%-slim}
if [ -z "$rust_base" ] || [ -z "$debian_base" ] || [ "${rust_base##*-}" != "$suite" ]; then
  echo "build-image.sh: expected 'FROM rust:X-SUITE' and 'FROM debian:SUITE-slim' in the Dockerfile" >&2
  exit 1
fi

have_image() { "$engine" image inspect "$1" >/dev/null 2>&1; }
standin_label='org.opencontainers.image.description="local stand-in made by scripts/build-image.sh --local-bases, not the Docker Hub image"'

make_debian_base() {
  local root="$work/rootfs"
  command -v debootstrap >/dev/null || { echo "build-image.sh: --local-bases needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  echo "== $debian_base: debootstrap --variant=minbase $suite from ${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
  debootstrap --variant=minbase "$suite" "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  # The sources and the dpkg/apt settings of the official slim image: its three suites, and no
  # documentation, manual pages or translations unpacked by later installs.
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  # The official image's apt settings for image builds: no package caches left behind by
  # `apt-get update`/`install` (without this every RUN that installs something keeps ~80 MB of
  # /var/cache/apt/*.bin in its layer), no translations, no suggested packages kept.
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # What the dpkg settings above would have left out of the packages debootstrap installed (as the
  # official image's build does).
  find "$root/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,groff,info,lintian}/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
  : >"$root/etc/machine-id"
  rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
  tar -C "$root" --numeric-owner -cf - . |
    "$engine" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --change "LABEL $standin_label" \
      - "docker.io/library/$debian_base" >/dev/null
  rm -rf "$root" "$work/debootstrap.log"
}

make_rust_base() {
  local rustup_home="${RUSTUP_HOME:-$HOME/.rustup}" ctx="$work/rust-context" tc="" d host
  command -v rustup >/dev/null || { echo "build-image.sh: --local-bases needs rustup on this host" >&2; exit 1; }
  find_toolchain() {
    for d in "$rustup_home"/toolchains/*/; do
      if "$d/bin/rustc" --version 2>/dev/null | grep -Eq "^rustc $rust_version([. ]|$)"; then
        tc="${d%/}"; return 0
      fi
    done
    return 1
  }
  if ! find_toolchain; then
    echo "== installing Rust $rust_version with rustup" >&2
    rustup toolchain install "$rust_version" --profile minimal >&2
    find_toolchain || { echo "build-image.sh: no Rust $rust_version toolchain under $rustup_home/toolchains" >&2; exit 1; }
  fi
  host=$("$tc/bin/rustc" -vV | sed -n 's/^host: //p')
  full_version=$("$tc/bin/rustc" --version | cut -d' ' -f2)
  echo "== $rust_base: $debian_base + Rust $full_version ($host) from $tc" >&2
  rm -rf "$ctx" && mkdir -p "$ctx/toolchain"
  # The toolchain without its HTML documentation (most of its size; the official image's minimal
  # profile has none either).
  tar -C "$tc/" --exclude=./share/doc -cf - . | tar -C "$ctx/toolchain" -xf -
  cp "$(command -v rustup)" "$ctx/rustup"
  mkdir -p "$ctx/extra-ca"
  local i=0 ca
  for ca in "${builder_cas[@]}"; do
    i=$((i + 1)); cp "$ca" "$ctx/extra-ca/builder-ca-$i.crt"
  done
  cat >"$ctx/Containerfile" <<EOF
FROM docker.io/library/$debian_base
LABEL $standin_label
# What a Rust build with C parts uses; every one of these is in buildpack-deps:$suite, the
# official rust image's base.
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates curl git gcc g++ libc6-dev make \\
      netbase xz-utils \\
 && rm -rf /var/lib/apt/lists/*
# Empty unless --builder-ca was given.
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$full_version
COPY rustup /usr/local/cargo/bin/rustup
COPY toolchain/ /usr/local/rustup/toolchains/$full_version-$host/
# rustup's proxies are the rustup binary under the tools' names, as rustup-init lays them out.
RUN for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-gdbgui rust-lldb; do \\
      ln -s rustup /usr/local/cargo/bin/\$p; \\
    done \\
 && rustup set auto-self-update disable \\
 && rustup default $full_version-$host \\
 && chmod -R a+w /usr/local/rustup /usr/local/cargo \\
 && rustup --version && cargo --version && rustc --version
EOF
  "$engine" build -t "docker.io/library/$rust_base" "$ctx" >&2
  rm -rf "$ctx"
}

if [ ${#builder_cas[@]} -gt 0 ] && ! $local_bases; then
  echo "build-image.sh: --builder-ca goes with --local-bases" >&2; exit 2
fi
if $local_bases; then
  [ "$(id -u)" = 0 ] || { echo "build-image.sh: --local-bases needs root (debootstrap, chroot)" >&2; exit 1; }
  work="${BASES_WORKDIR:-/var/tmp/tdmq-backup-image-bases}"
  mkdir -p "$work"
  if have_image "docker.io/library/$debian_base"; then
    echo "== $debian_base: already in local storage, kept" >&2
  else
    make_debian_base
  fi
  if have_image "docker.io/library/$rust_base"; then
    echo "== $rust_base: already in local storage, kept" >&2
  else
    make_rust_base
  fi
  rmdir "$work" 2>/dev/null || true
fi

echo "== $engine build -t $tag ." >&2
"$engine" build -t "$tag" "${build_args[@]}" .
echo "== built $tag: $("$engine" image inspect --format '{{.Size}}' "$tag") bytes" >&2
