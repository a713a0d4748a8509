#!/usr/bin/env bash
# A real backup, end to end, on embedded defaults:
#   pulsar-lite broker (+ our relay) → tdmq-backup-ingester → tdmq-backup-uploader → file:// store
# It creates a rule with the real CLI, produces sample messages, waits until every one is stored
# and acknowledged, then shows status, the run log and the files it wrote (under demo-out/).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${COUNT:-5000}"
OUT="$PWD/demo-out"
BROKER_PORT="${BROKER_PORT:-16650}"
RELAY_PORT="${RELAY_PORT:-16651}"

echo "== installing the local broker (pulsar-lite) and building the binaries"
BROKER_BIN="$(scripts/setup-test-services.sh)"
cargo build --workspace --bins --quiet
BIN="$PWD/target/debug"

rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open; see $OUT/*.log" >&2; exit 1; }

printf 'default_partitions = 0\n[metrics]\nenabled = false\n' > "$OUT/broker.toml"
"$BROKER_BIN" --config "$OUT/broker.toml" --addr "127.0.0.1:$BROKER_PORT" --db-path "$OUT/broker-data" --log-level warn >"$OUT/broker.log" 2>&1 &
pids+=($!); wait_port "$BROKER_PORT"
# pulsar-lite leaves out the frame checksum the pulsar crate requires; the relay adds it.
"$BIN/tdmq-backup-relay" --listen "127.0.0.1:$RELAY_PORT" --broker "127.0.0.1:$BROKER_PORT" >"$OUT/relay.log" 2>&1 &
pids+=($!); wait_port "$RELAY_PORT"
# The daemons pick free ports (listen on port 0) and say which in their "ready" line, so the
# demo never clashes with daemons already running on 7601/7602.
ready_addr() {
  for _ in $(seq 1 200); do
    addr=$(sed -n "s/.*$1 ready listen=\([0-9.:]*\).*/\1/p" "$OUT/$1.log" | head -n 1)
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    sleep 0.1
  done
  echo "the $1 did not start; see $OUT/$1.log" >&2; exit 1
}
"$BIN/tdmq-backup-ingester" --data-dir "$OUT/ingester" --listen 127.0.0.1:0 >"$OUT/ingester.log" 2>&1 &
pids+=($!); INGESTER="http://$(ready_addr ingester)"
"$BIN/tdmq-backup-uploader" --endpoint "file://$OUT/store" --state-dir "$OUT/uploader" \
  --ingester "$INGESTER" --listen 127.0.0.1:0 >"$OUT/uploader.log" 2>&1 &
pids+=($!); UPLOADER="http://$(ready_addr uploader)"
export TDMQ_BACKUP_INGESTER="$INGESTER" TDMQ_BACKUP_UPLOADER="$UPLOADER"
echo "== broker, relay, ingester ($INGESTER) and uploader ($UPLOADER, store file://$OUT/store) are up"

set -x
"$BIN/tdmq-backup" rule create demo-orders \
  --service-url "pulsar://127.0.0.1:$RELAY_PORT" --topic demo-orders --subscription tdmq-backup \
  --bucket demo-bucket --region ap-guangzhou --prefix backup/ --window 10s --max-messages 2000
"$BIN/tdmq-backup-sample-producer" --url "pulsar://127.0.0.1:$RELAY_PORT" --topic persistent://public/default/demo-orders --count "$COUNT"
{ set +x; } 2>/dev/null

echo "== waiting until all $COUNT messages are stored and acknowledged"
acked=0
for _ in $(seq 1 120); do
  "$BIN/tdmq-backup" rule flush demo-orders >/dev/null
  acked=$("$BIN/tdmq-backup" --output json status demo-orders |
    .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(sum(r["messages_acked"] for r in d["rules"]))')
  [ "$acked" -ge "$COUNT" ] && break
  sleep 1
done

set -x
"$BIN/tdmq-backup" status
"$BIN/tdmq-backup" logs demo-orders --limit 5
{ set +x; } 2>/dev/null
echo "== files written to the store:"
objects=$(cd "$OUT/store" && find demo-bucket -type f -name '*.jsonl.gz' | sort)
echo "$objects"
first=$(echo "$objects" | head -n 1)
echo "== first 2 records of $first (lines cut at 300 characters):"
# zcat | head ends zcat with SIGPIPE: not an error here.
(zcat "$OUT/store/$first" | head -n 2 | cut -c 1-300) || true
total=$(cd "$OUT/store" && find demo-bucket -type f -name '*.jsonl.gz' -exec zcat {} + | wc -l)
echo "== $total records in the store, $acked messages acknowledged on Pulsar (produced $COUNT)"
[ "$acked" -ge "$COUNT" ] || { echo "demo: not everything was backed up; see $OUT/*.log" >&2; exit 1; }
echo "== verify: every object the rule stored is in the store, intact, and the message ids have no gaps"
set -x
"$BIN/tdmq-backup" verify demo-orders
{ set +x; } 2>/dev/null
echo "== restore: the backup replayed into another topic (the uploader reads, the ingester produces)"
set -x
"$BIN/tdmq-backup" restore create demo-restore --rule demo-orders \
  --to-topic persistent://public/default/demo-orders-restored --service-url "pulsar://127.0.0.1:$RELAY_PORT" --dry-run
"$BIN/tdmq-backup" restore create demo-restore --rule demo-orders \
  --to-topic persistent://public/default/demo-orders-restored --service-url "pulsar://127.0.0.1:$RELAY_PORT"
{ set +x; } 2>/dev/null
state=""
for _ in $(seq 1 120); do
  state=$("$BIN/tdmq-backup" --output json restore show demo-restore |
    .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  case "$state" in done|failed|cancelled) break ;; esac
  sleep 1
done
set -x
"$BIN/tdmq-backup" restore show demo-restore
{ set +x; } 2>/dev/null
[ "$state" = done ] || { echo "demo: the restore ended $state; see $OUT/*.log" >&2; exit 1; }
