#!/usr/bin/env bash
# Runs keytrail locally with demo traffic: a local ClickHouse (installed and started when
# KEYTRAIL_CLICKHOUSE_DSN is not set), keytrail with its embedded JetStream, and the gateway
# traffic simulator. Prints the URLs and example queries; Ctrl-C stops everything.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
state="$repo/.local"
mkdir -p "$state/bin" "$state/log"

http_listen="${KEYTRAIL_HTTP_LISTEN:-127.0.0.1:8080}"
grpc_listen="${KEYTRAIL_GRPC_LISTEN:-127.0.0.1:9090}"
nats_listen="${KEYTRAIL_NATS_LISTEN:-127.0.0.1:4222}"
rate="${KEYTRAIL_DEMO_RATE:-200}"
# Ninety minutes of ordinary traffic first, so the spike and the new caller have a baseline.
history="${KEYTRAIL_DEMO_HISTORY:-90m}"

if [[ -z "${KEYTRAIL_CLICKHOUSE_DSN:-}" ]]; then
  "$repo/deploy/clickhouse/local.sh" start
  export KEYTRAIL_CLICKHOUSE_DSN="clickhouse://127.0.0.1:${KEYTRAIL_CH_TCP_PORT:-19000}/keytrail"
  # The demo's story uses fixed key ids: start each run from a clean slate so earlier runs'
  # events do not blur it (KEYTRAIL_DEMO_KEEP=1 keeps them).
  if [[ -z "${KEYTRAIL_DEMO_KEEP:-}" ]]; then
    "$repo/deploy/clickhouse/local.sh" client --query "DROP DATABASE IF EXISTS keytrail"
    rm -rf "$state/nats"
  fi
fi

echo "building keytrail and the simulator..."
go build -o "$state/bin/" ./services/keytrail ./services/simulator

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped keytrail and the simulator (ClickHouse keeps running: make clickhouse-stop)"
}
trap cleanup INT TERM EXIT

rm -f "$state/admin-token"
"$state/bin/keytrail" serve \
  -http-listen "$http_listen" -grpc-listen "$grpc_listen" \
  -nats-listen "$nats_listen" -nats-store-dir "$state/nats" \
  -dev-token-file "$state/admin-token" \
  >"$state/log/keytrail.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -sf "http://$http_listen/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "keytrail exited; its log:" >&2
    tail -n 30 "$state/log/keytrail.log" >&2
    exit 1
  fi
  sleep 0.2
done
curl -sf "http://$http_listen/readyz" >/dev/null || { echo "keytrail not ready; see $state/log/keytrail.log" >&2; exit 1; }

"$state/bin/simulator" -nats-url "nats://$nats_listen" -rate "$rate" -history "$history" >"$state/log/simulator.log" 2>&1 &
pids+=($!)

base="http://$http_listen"
token="$(cat "$state/admin-token")"
auth="Authorization: Bearer $token"
cat <<TEXT

keytrail is running with demo traffic ($rate events/s, after $history of history).
  console       $base/ui/  (sign in with the admin token below)
  REST API      $base/v1/...
  OpenAPI       $base/openapi.json
  gRPC          $grpc_listen (keytrail.v1.QueryService)
  metrics       $base/metrics
  NATS          nats://$nats_listen (subjects keytrail.usage.<project>, keytrail.lifecycle.<project>)
  logs          $state/log/keytrail.log, $state/log/simulator.log

Dev mode (insecure): an ephemeral admin token, valid until keytrail stops, is in
$state/admin-token:
  $token

The demo's stories unfold over its first ten minutes. In the console:
  $base/ui/#/rotation/key_acme_0007   the rotation in progress (key_acme_0007 -> key_acme_0081)
  $base/ui/#/key/key_initech_0013     the disabled key legacy-export-cron still calls
  $base/ui/#/anomalies                the spiking key key_globex_0021 and the new caller
  $base/ui/#/spend?project=umbrella   key_umbrella_0005 over its daily budget
  $base/ui/#/audit                    who did what, and the audit chain's head hashes
Or with curl:

  export KT="$auth"
  # who uses the key being rotated, and is the roll complete?
  curl -s -H "\$KT" '$base/v1/keys/key_acme_0007/services'
  curl -s -H "\$KT" '$base/v1/rotations/key_acme_0007'
  $state/bin/keytrail rotation check --old key_acme_0007 --token $token
  # the lifecycle audit trail, and whether it was tampered with
  curl -s -H "\$KT" '$base/v1/audit/events?project=acme&page_size=5'
  curl -s -H "\$KT" '$base/v1/audit/verify'
  # a disabled key a forgotten cron job still calls (403s), and a key past its TTL
  curl -s -H "\$KT" '$base/v1/keys/key_initech_0013/services'
  curl -s -H "\$KT" '$base/v1/keys/key_initech_0061'
  # spend per key per hour, and keys near or over budget
  curl -s -H "\$KT" '$base/v1/spend?group_by=SPEND_DIMENSION_KEY&granularity=GRANULARITY_HOUR&project=umbrella'
  curl -s -H "\$KT" '$base/v1/budgets?only_alerting=true'
  # the spiking key (minutes 6 to 10) and the new caller (from minute 4); anomalies of the last
  # 30 minutes, as the alert evaluator scans (a window needs an hour of history before it, and
  # the demo starts with 90 minutes)
  curl -s -H "\$KT" "$base/v1/anomalies?start_time=\$(date -u -d '-30 min' +%FT%TZ)"
  curl -s -H "\$KT" "$base/v1/new-callers?start_time=\$(date -u -d '-15 min' +%FT%TZ)"
  # alerts the evaluator published for them
  curl -s -H "\$KT" '$base/metrics' | grep keytrail_alerts_published_total

Ctrl-C stops keytrail and the simulator.
TEXT

wait -n "${pids[@]}" || true
echo "a process exited; see $state/log/" >&2
