#!/usr/bin/env bash
# A real backup through the container image (scripts/build-image.sh builds it), the way
# docs/user-guide.md "Container image" runs it:
#   pulsar-lite broker + relay (on this host) → ingester container ──gRPC──▶ uploader container
#   → file:// store on a bind-mounted directory
# The two daemons run in separate containers on a user-defined network, with a read-only root
# filesystem (as deploy/kubernetes sets readOnlyRootFilesystem), listen on 0.0.0.0 with
# the control-plane token file mounted read-only, and reach each other by container name; ctl runs
# in a third container. First the image's contents are checked (binaries, user, volumes, CA
# certificates). Then it creates a rule, produces COUNT messages, and waits until every one is
# stored and acknowledged, streaming the segments over gRPC; then it restarts the uploader with
# the ingester's volume mounted read-only and checks that it reads the sealed files from there;
# last, that both daemons stop cleanly on `stop` (SIGTERM to PID 1).
#
#   scripts/image-smoke.sh            (ENGINE=docker for Docker; IMAGE, COUNT to change the rest)
#
# Needs root (the files handed to the containers are owned by the image's user, uid 10001),
# cargo (the relay and the sample producer are test binaries) and python3. Removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE="${ENGINE:-podman}"
IMAGE="${IMAGE:-tdmq-backup}"
COUNT="${COUNT:-2000}"
BROKER_PORT="${BROKER_PORT:-16660}"
NET=tdmq-backup-smoke
ING=tdmq-backup-smoke-ingester
UPL=tdmq-backup-smoke-uploader
VOL_ING=tdmq-backup-smoke-ingester-data
VOL_UPL=tdmq-backup-smoke-uploader-state
APP_UID=10001

[ "$(id -u)" = 0 ] || { echo "image-smoke.sh: run as root (files for uid $APP_UID)" >&2; exit 1; }
"$ENGINE" image inspect "$IMAGE" >/dev/null || { echo "image-smoke.sh: no image $IMAGE; scripts/build-image.sh builds it" >&2; exit 1; }

echo "== installing the local broker (pulsar-lite), building the relay and the sample producer"
BROKER_BIN="$(scripts/setup-test-services.sh)"
cargo build -p tdmq-backup-tests --bin tdmq-backup-relay --bin tdmq-backup-sample-producer --quiet
BIN="$PWD/target/debug"

OUT="$(mktemp -d /var/tmp/tdmq-backup-smoke.XXXXXX)"
pids=()
cleanup() {
  status=$?
  if [ "$status" != 0 ]; then
    for c in "$ING" "$UPL"; do
      echo "== last lines of $c's log:" >&2
      "$ENGINE" logs --tail 20 "$c" >&2 2>&1 || true
    done
  fi
  "$ENGINE" rm -f "$ING" "$UPL" >/dev/null 2>&1 || true
  "$ENGINE" volume rm "$VOL_ING" "$VOL_UPL" >/dev/null 2>&1 || true
  "$ENGINE" network rm "$NET" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
  exit "$status"
}
trap cleanup EXIT
trap 'echo "image-smoke.sh: a command failed at line $LINENO" >&2' ERR
in_image() { "$ENGINE" run --rm "$IMAGE" "$@"; }

echo "== the image"
in_image tdmq-backup --version
in_image tdmq-backup-ingester --version
in_image tdmq-backup-uploader --version
for b in tdmq-backup tdmq-backup-ingester tdmq-backup-uploader; do
  in_image "$b" --help >/dev/null || { echo "image-smoke.sh: $b --help failed" >&2; exit 1; }
done
user=$(in_image id -u)
[ "$user" = "$APP_UID" ] || { echo "image-smoke.sh: runs as uid $user, expected $APP_UID" >&2; exit 1; }
# Anonymous volumes here, as a fresh named volume gets them: the image's directory, copied up.
modes=$(in_image stat -c '%u %a %n' /var/lib/tdmq-backup/ingester /var/lib/tdmq-backup/uploader)
echo "$modes"
[ "$(echo "$modes" | grep -c "^$APP_UID 700 ")" = 2 ] || { echo "image-smoke.sh: volumes not $APP_UID 0700" >&2; exit 1; }
in_image test -s /etc/ssl/certs/ca-certificates.crt || { echo "image-smoke.sh: no CA certificates" >&2; exit 1; }
echo "uid $user; volumes $APP_UID 0700; /etc/ssl/certs/ca-certificates.crt present"

echo "== configuration: the example configs, a token file owned by uid $APP_UID, mode 0600"
mkdir -p "$OUT/etc" "$OUT/store"
cp examples/ingester.toml examples/uploader.toml "$OUT/etc/"
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$OUT/etc/control.token"
chown "$APP_UID:$APP_UID" "$OUT/etc/control.token" "$OUT/store"
chmod 0600 "$OUT/etc/control.token"
chmod 0755 "$OUT" "$OUT/etc"

"$ENGINE" network create "$NET" >/dev/null
ready() { # container, daemon: waits for the daemon's "ready" log line
  for _ in $(seq 1 300); do
    "$ENGINE" logs "$1" 2>&1 | grep "$2 ready" >/dev/null && return 0
    "$ENGINE" container inspect -f '{{.State.Running}}' "$1" | grep true >/dev/null || break
    sleep 0.1
  done
  echo "image-smoke.sh: $1 did not start" >&2; exit 1
}
start_ingester() {
  "$ENGINE" run -d --read-only --name "$ING" --network "$NET" -p 127.0.0.1::7611 \
    -v "$VOL_ING:/var/lib/tdmq-backup/ingester" -v "$OUT/etc:/etc/tdmq-backup:ro" \
    "$IMAGE" tdmq-backup-ingester --config /etc/tdmq-backup/ingester.toml \
    --listen 0.0.0.0:7601 --metrics-listen 0.0.0.0:7611 --node-id smoke >/dev/null
  ready "$ING" ingester
}
start_uploader() { # extra run options
  "$ENGINE" run -d --read-only --name "$UPL" --network "$NET" "$@" \
    -v "$VOL_UPL:/var/lib/tdmq-backup/uploader" -v "$OUT/etc:/etc/tdmq-backup:ro" \
    -v "$OUT/store:/backup" \
    "$IMAGE" tdmq-backup-uploader --config /etc/tdmq-backup/uploader.toml \
    --ingester "http://$ING:7601" --listen 0.0.0.0:7602 --metrics-listen 0.0.0.0:7612 \
    --endpoint file:///backup >/dev/null
  ready "$UPL" uploader
}
ctl() {
  "$ENGINE" run --rm --network "$NET" -v "$OUT/etc:/etc/tdmq-backup:ro" "$IMAGE" \
    tdmq-backup --ingester "http://$ING:7601" --uploader "http://$UPL:7602" \
    --auth-token-file /etc/tdmq-backup/control.token "$@"
}
start_ingester
start_uploader
echo "== ingester and uploader containers are up on network $NET"

# The broker and the relay run on this host; the relay listens on the network's gateway address,
# which the containers reach, and hands that address out in topic lookups.
GW=$("$ENGINE" network inspect "$NET" -f '{{range .Subnets}}{{.Gateway}}{{end}}' 2>/dev/null ||
  "$ENGINE" network inspect "$NET" -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
printf 'default_partitions = 0\n[metrics]\nenabled = false\n' >"$OUT/broker.toml"
# pulsar-lite does not say which port it got for port 0, so it takes BROKER_PORT (as in demo.sh).
"$BROKER_BIN" --config "$OUT/broker.toml" --addr "127.0.0.1:$BROKER_PORT" --db-path "$OUT/broker-data" \
  --log-level warn >"$OUT/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break; sleep 0.1; done
"$BIN/tdmq-backup-relay" --listen "$GW:0" --broker "127.0.0.1:$BROKER_PORT" >"$OUT/relay.log" 2>&1 &
pids+=($!)
SERVICE_URL=""
for _ in $(seq 1 100); do
  SERVICE_URL=$(grep -o "url=pulsar://[0-9.]*:[0-9]*" "$OUT/relay.log" | head -n 1 | sed 's/^url=//') || true
  [ -n "$SERVICE_URL" ] && break
  sleep 0.1
done
[ -n "$SERVICE_URL" ] || { echo "image-smoke.sh: the relay did not start" >&2; cat "$OUT/relay.log" "$OUT/broker.log" >&2; exit 1; }
echo "== broker on 127.0.0.1:$BROKER_PORT, relay on $SERVICE_URL (the network's gateway)"

ctl rule create smoke --service-url "$SERVICE_URL" --topic smoke --subscription tdmq-backup \
  --bucket smoke-bucket --region ap-guangzhou --prefix backup/ --window 5s --max-messages 500

produce_and_wait() { # total expected acknowledged after producing $COUNT more
  "$BIN/tdmq-backup-sample-producer" --url "$SERVICE_URL" --topic smoke --count "$COUNT" --seed "$2" >/dev/null
  acked=0
  for _ in $(seq 1 120); do
    ctl rule flush smoke >/dev/null
    acked=$(ctl --output json status smoke |
      python3 -c 'import json,sys; print(sum(r["messages_acked"] for r in json.load(sys.stdin)["rules"]))')
    [ "$acked" -ge "$1" ] && return 0
    sleep 1
  done
  echo "image-smoke.sh: $acked of $1 messages acknowledged" >&2; exit 1
}
stored_records() { find "$OUT/store/smoke-bucket" -type f -name '*.jsonl.gz' -exec zcat {} + | wc -l; }

echo "== producing $COUNT messages; the uploader streams the segments over gRPC"
produce_and_wait "$COUNT" 1
"$ENGINE" logs "$UPL" 2>&1 | grep 'streaming segments over ReadSegment' >/dev/null ||
  { echo "image-smoke.sh: the uploader did not say it streams the segments" >&2; exit 1; }
ctl status
echo "$(stored_records) records in $(find "$OUT/store/smoke-bucket" -type f -name '*.jsonl.gz' | wc -l) objects"
metrics_port=$("$ENGINE" port "$ING" 7611/tcp | head -n 1 | sed 's/.*://')
python3 - "$metrics_port" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
acked = [l for l in body.splitlines() if l.startswith("tdmq_backup_ingester_messages_acked_total")]
print("ingester /metrics through the published port:", acked[0] if acked else "no acked counter")
sys.exit(0 if acked else 1)
EOF

echo "== the uploader again, with the ingester's volume mounted read-only: it reads the sealed files"
"$ENGINE" rm -f "$UPL" >/dev/null
start_uploader -v "$VOL_ING:/var/lib/tdmq-backup/ingester:ro"
produce_and_wait $((2 * COUNT)) 2
"$ENGINE" logs "$UPL" 2>&1 | grep "reading sealed segments from the ingester's disk on this host" >/dev/null ||
  { echo "image-smoke.sh: the uploader did not read the sealed files from the shared volume" >&2; exit 1; }

records=$(stored_records)
echo "== $records records in the store, $acked messages acknowledged on Pulsar (produced $((2 * COUNT)))"
[ "$records" -ge $((2 * COUNT)) ] || { echo "image-smoke.sh: fewer records than messages" >&2; exit 1; }
echo "== stopping both containers: SIGTERM, a clean exit well inside the timeout"
for c in "$UPL" "$ING"; do
  start=$(date +%s)
  "$ENGINE" stop -t 30 "$c" >/dev/null
  code=$("$ENGINE" container inspect -f '{{.State.ExitCode}}' "$c")
  echo "$c: exit code $code after $(($(date +%s) - start)) s"
  [ "$code" = 0 ] || { echo "image-smoke.sh: $c did not exit cleanly on SIGTERM" >&2; exit 1; }
done
echo "== image-smoke: OK"
