#!/usr/bin/env bash
# A keytrail cluster on loopback, for the multi-node test and for trying cluster mode by hand:
# ZooKeeper, ClickHouse 18.16 as SHARDS x REPLICAS servers (2 x 2 by default) in one cluster,
# and a 3-node NATS JetStream cluster. Every server is a plain background process with its own
# ports, config, data and logs under KEYTRAIL_CLUSTER_DIR; nothing else on the machine is
# touched (the shared ClickHouse of `make test` at 19000 least of all).
#
# Usage: deploy/cluster/local.sh start|stop|status|env [COMPONENT]
#        deploy/cluster/local.sh kill|pid COMPONENT
#   COMPONENT is zookeeper, ch-sSrR (ch-s1r1 ... ch-s2r2) or nats-N (nats-1 ... nats-3); no
#   COMPONENT means all of them. kill sends SIGKILL (a crash); stop sends SIGTERM and waits.
#   env prints the addresses as shell variables (KEYTRAIL_CLUSTER_CH_DSN and friends).
#
# Settings (environment):
#   KEYTRAIL_CLUSTER_DIR        state dir (default <repo>/.local/cluster)
#   KEYTRAIL_CLUSTER_PORT_BASE  first of the ~60 ports used (default 21000); see ports below
#   KEYTRAIL_CLUSTER_NAME       ClickHouse cluster name (default keytrail)
#   KEYTRAIL_CLUSTER_SHARDS, KEYTRAIL_CLUSTER_REPLICAS   ClickHouse topology (default 2 and 2)
#   KEYTRAIL_CLUSTER_NATS       number of nats-server processes (default 3)
#   KEYTRAIL_CLUSTER_ZK_SESSION_MS  ClickHouse's ZooKeeper session timeout (default 6000)
#   KEYTRAIL_NATS_SERVER_BIN    a nats-server binary to run (default: built from go.mod's version)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$script_dir/../.." && pwd)"

dir="$(realpath -m -- "${KEYTRAIL_CLUSTER_DIR:-$repo/.local/cluster}")"
base="${KEYTRAIL_CLUSTER_PORT_BASE:-21000}"
cluster="${KEYTRAIL_CLUSTER_NAME:-keytrail}"
shards="${KEYTRAIL_CLUSTER_SHARDS:-2}"
replicas="${KEYTRAIL_CLUSTER_REPLICAS:-2}"
nats_count="${KEYTRAIL_CLUSTER_NATS:-3}"
zk_session_ms="${KEYTRAIL_CLUSTER_ZK_SESSION_MS:-6000}"
ch_script="$repo/deploy/clickhouse/local.sh"
# shellcheck source=deploy/common.sh
source "$repo/deploy/common.sh"

die() {
  echo "cluster/local.sh: $*" >&2
  exit 1
}

[[ "$base" =~ ^[0-9]+$ ]] && ((base >= 1024 && base + 100 < 65536)) || die "KEYTRAIL_CLUSTER_PORT_BASE must be a port number between 1024 and 65435, got '$base'"
[[ "$cluster" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "KEYTRAIL_CLUSTER_NAME must be a plain identifier, got '$cluster'"
[[ "$shards" =~ ^[1-9]$ && "$replicas" =~ ^[1-9]$ ]] || die "shards and replicas must be 1-9"
((shards * replicas <= 12)) || die "at most 12 ClickHouse servers"
[[ "$nats_count" =~ ^[1-5]$ ]] || die "KEYTRAIL_CLUSTER_NATS must be 1-5"
[[ "$dir" != *[\&\<\>\"\']* ]] || die "KEYTRAIL_CLUSTER_DIR must not contain & < > \" or ': $dir"

# Ports, all on 127.0.0.1:
#   base          ZooKeeper client port
#   base+10+3k    ClickHouse server k (k = 0 for s1r1, 1 for s1r2, ... in shard-major order):
#                 native tcp, then http (+1), then interserver replication (+2)
#   base+50+j     NATS server j (j = 0 for nats-1): client port; +60+j cluster routes;
#                 +70+j monitoring (http /healthz)
zk_port=$base

ch_names() {
  local s r
  for ((s = 1; s <= shards; s++)); do
    for ((r = 1; r <= replicas; r++)); do
      echo "ch-s${s}r${r}"
    done
  done
}

# ch_index NAME prints k, the server's place in shard-major order.
ch_index() {
  [[ "$1" =~ ^ch-s([1-9])r([1-9])$ ]] || return 1
  local s="${BASH_REMATCH[1]}" r="${BASH_REMATCH[2]}"
  ((s <= shards && r <= replicas)) || return 1
  echo $(((s - 1) * replicas + r - 1))
}

ch_tcp_port() { echo $((base + 10 + 3 * $(ch_index "$1"))); }

nats_names() {
  local j
  for ((j = 1; j <= nats_count; j++)); do echo "nats-$j"; done
}

nats_index() {
  [[ "$1" =~ ^nats-([1-9])$ ]] && ((BASH_REMATCH[1] <= nats_count)) || return 1
  echo $((BASH_REMATCH[1] - 1))
}

# ---------------------------------------------------------------------------------------------
# Process bookkeeping. PIDs wrap quickly here: a pid file proves nothing until the process's
# command line shows it is the server this script started (its config path is in it).

# pid_of NAME MARKER prints the pid from NAME's pid file if that process's command line
# contains MARKER as one argument.
pid_of() {
  local pid_file="$dir/$1/pid"
  [[ "$1" == ch-* ]] && pid_file="$dir/$1/clickhouse-server.pid"
  verified_pid "$pid_file" "$2"
}

marker_of() {
  case "$1" in
    zookeeper) echo "$dir/zookeeper/zoo.cfg" ;;
    ch-*) echo "--config-file=$dir/$1/etc/config.xml" ;;
    nats-*) echo "$dir/$1/nats.conf" ;;
  esac
}

# spawn NAME LOG CMD...: runs CMD in the background in a session of its own (Ctrl-C in the
# terminal that started the cluster does not reach it), its output appended to LOG, and writes
# its pid to NAME's pid file. The script has no job control, so setsid execs in place: $! is
# the server's pid.
spawn() {
  local name="$1" log="$2"
  shift 2
  nohup setsid "$@" </dev/null >>"$log" 2>&1 &
  echo "$!" >"$dir/$name/pid"
}

# await_up NAME LOG CHECK...: waits up to 30 s until the command CHECK... succeeds; dies with
# the end of LOG if the process spawned for NAME exits first. kill -0, not pid_of: until the
# exec completes, the child's command line is still this script's.
await_up() {
  local name="$1" log="$2" pid deadline=$((SECONDS + 30))
  shift 2
  pid="$(<"$dir/$name/pid")"
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "$name exited during start-up"; }
    ((SECONDS < deadline)) || die "$name not up after 30s ($*)"
    sleep 0.1
  done
}

# wait_gone PID seconds: waits for the process to exit.
wait_gone() {
  local pid="$1" deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------------------------
# ZooKeeper (Debian's package, standalone).

zk_install() {
  [[ -f /usr/share/java/zookeeper.jar ]] && command -v java >/dev/null 2>&1 && return 0
  apt_install zookeeper
  [[ -f /usr/share/java/zookeeper.jar ]] || die "apt-get finished but /usr/share/java/zookeeper.jar is missing"
}

# zk_mode prints ZooKeeper's "Mode:" line. It answers `ruok` before it serves sessions; `srvr`
# saying standalone is the readiness signal.
zk_mode() {
  local out
  out="$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$zk_port; printf srvr >&3; cat <&3" 2>/dev/null)" || true
  grep -o 'Mode: [a-z]*' <<<"$out" || true
}

zk_start() {
  zk_install
  local zdir="$dir/zookeeper"
  if pid_of zookeeper "$(marker_of zookeeper)" >/dev/null; then
    echo "zookeeper already running"
    return 0
  fi
  tcp_open "$zk_port" && die "something else listens on the ZooKeeper port $zk_port"
  mkdir -p "$zdir/data" "$zdir/log"
  # tickTime 500 ms lets ClickHouse ask for sessions of 1-10 s (ZooKeeper bounds them to 2-20
  # ticks): a crashed ClickHouse replica's old session, which keeps the restarted one read-only,
  # then expires in seconds. admin.enableServer=false: no Jetty on port 8080.
  cat >"$zdir/zoo.cfg" <<EOF
tickTime=500
dataDir=$zdir/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr
EOF
  spawn zookeeper "$zdir/log/stdout.log" java -Xms32m -Xmx256m -XX:+UseSerialGC -Dzookeeper.log.dir="$zdir/log" \
    -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$zdir/zoo.cfg"
  await_up zookeeper "$zdir/log/stdout.log" zk_serving
  echo "zookeeper ready at 127.0.0.1:$zk_port"
}

zk_serving() { [[ "$(zk_mode)" == "Mode: standalone" ]]; }

# ---------------------------------------------------------------------------------------------
# ClickHouse: deploy/clickhouse/local.sh runs each server; this adds config.d/cluster.xml.

ch_env() {
  local k
  k="$(ch_index "$1")"
  echo "KEYTRAIL_CH_DIR=$dir/$1" "KEYTRAIL_CH_TCP_PORT=$((base + 10 + 3 * k))" \
    "KEYTRAIL_CH_HTTP_PORT=$((base + 11 + 3 * k))" "KEYTRAIL_CH_INTERSERVER_PORT=$((base + 12 + 3 * k))"
}

ch_cluster_xml() {
  local name="$1" s r
  [[ "$name" =~ ^ch-s([1-9])r([1-9])$ ]]
  local my_shard="${BASH_REMATCH[1]}"
  echo "<?xml version=\"1.0\"?>"
  echo "<!-- Written by deploy/cluster/local.sh: the cluster this server belongs to. -->"
  echo "<yandex>"
  echo "    <zookeeper>"
  echo "        <node><host>127.0.0.1</host><port>$zk_port</port></node>"
  echo "        <session_timeout_ms>$zk_session_ms</session_timeout_ms>"
  echo "    </zookeeper>"
  echo "    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>"
  echo "    <remote_servers>"
  echo "        <$cluster>"
  for ((s = 1; s <= shards; s++)); do
    echo "            <shard>"
    echo "                <internal_replication>true</internal_replication>"
    for ((r = 1; r <= replicas; r++)); do
      echo "                <replica><host>127.0.0.1</host><port>$(ch_tcp_port "ch-s${s}r${r}")</port></replica>"
    done
    echo "            </shard>"
  done
  echo "        </$cluster>"
  echo "    </remote_servers>"
  # Replica names are unique across the whole cluster (s1r1, ...), so a table replicated to
  # every server (the migration ledger) can use the same macro.
  echo "    <macros><shard>$my_shard</shard><replica>${name#ch-}</replica></macros>"
  echo "</yandex>"
}

ch_start() {
  local name="$1"
  mkdir -p "$dir/$name/etc/config.d"
  ch_cluster_xml "$name" >"$dir/$name/etc/config.d/cluster.xml"
  # shellcheck disable=SC2046
  env $(ch_env "$name") "$ch_script" start | sed "s/^/$name: /"
}

ch_stop() {
  # shellcheck disable=SC2046
  env $(ch_env "$1") "$ch_script" stop | sed "s/^/$1: /"
}

# ---------------------------------------------------------------------------------------------
# NATS: nats-server built from the Go module keytrail already depends on (the Debian package is
# too old for the JetStream features keytrail uses), at the version go.mod requires, into
# .local/bin/nats-server-<version>: the binary and path internal/testenv's NATSServerBinary
# builds for the fault tests, so either builds it for the other and a go.mod upgrade builds
# the new one. KEYTRAIL_NATS_SERVER_BIN names another binary instead.

nats_bin=""

nats_build() {
  [[ -z "$nats_bin" ]] || return 0
  if [[ -n "${KEYTRAIL_NATS_SERVER_BIN:-}" ]]; then
    nats_bin="$KEYTRAIL_NATS_SERVER_BIN"
    [[ -x "$nats_bin" ]] || die "KEYTRAIL_NATS_SERVER_BIN=$nats_bin is not an executable"
    return 0
  fi
  local module=github.com/nats-io/nats-server/v2 version
  version="$(cd "$repo" && go list -m -f '{{.Version}}' "$module")" || die "version of $module: go list failed"
  nats_bin="$repo/.local/bin/nats-server-$version"
  [[ -x "$nats_bin" ]] && return 0
  echo "building nats-server $version from the Go module into $nats_bin..."
  mkdir -p "$(dirname "$nats_bin")"
  # Built beside its final name and renamed: a test building it at the same time never runs
  # half a binary.
  (cd "$repo" && go build -o "$nats_bin.tmp$$" "$module") || { rm -f "$nats_bin.tmp$$"; die "go build $module failed"; }
  mv -f "$nats_bin.tmp$$" "$nats_bin"
}

nats_start() {
  local name="$1" j routes="" i
  j="$(nats_index "$name")"
  nats_build
  if pid_of "$name" "$(marker_of "$name")" >/dev/null; then
    echo "$name already running"
    return 0
  fi
  local ndir="$dir/$name"
  mkdir -p "$ndir/store"
  for ((i = 0; i < nats_count; i++)); do
    ((i == j)) && continue
    routes+="${routes:+, }\"nats-route://127.0.0.1:$((base + 60 + i))\""
  done
  # A lone server gets no cluster block: nats-server refuses a JetStream cluster without routes.
  local cluster_block=""
  if ((nats_count > 1)); then
    cluster_block="cluster {
  name: keytrail
  listen: 127.0.0.1:$((base + 60 + j))
  routes: [$routes]
}"
  fi
  cat >"$ndir/nats.conf" <<EOF
# Written by deploy/cluster/local.sh.
server_name: $name
listen: 127.0.0.1:$((base + 50 + j))
http: 127.0.0.1:$((base + 70 + j))
max_payload: 1MB
jetstream { store_dir: "$ndir/store" }
$cluster_block
EOF
  tcp_open $((base + 50 + j)) && die "something else listens on $name's port $((base + 50 + j))"
  spawn "$name" "$ndir/nats.log" "$nats_bin" -c "$ndir/nats.conf"
  await_up "$name" "$ndir/nats.log" tcp_open $((base + 50 + j))
  echo "$name listening at nats://127.0.0.1:$((base + 50 + j))"
}

# nats_wait_healthy NAME: waits until the server's /healthz says ok, which on a cluster means
# JetStream is in contact with a meta leader (so a quorum of servers is up).
nats_wait_healthy() {
  local name="$1" j
  j="$(nats_index "$name")"
  local deadline=$((SECONDS + 60))
  until curl -sf --max-time 2 "http://127.0.0.1:$((base + 70 + j))/healthz" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$name not healthy after 60s (no JetStream meta leader?): $(curl -s --max-time 2 "http://127.0.0.1:$((base + 70 + j))/healthz")"
    sleep 0.2
  done
  echo "$name healthy"
}

# ---------------------------------------------------------------------------------------------

proc_stop() {
  local name="$1" pid
  if ! pid="$(pid_of "$name" "$(marker_of "$name")")"; then
    echo "$name is not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 30; then
    pid_of "$name" "$(marker_of "$name")" >/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "$name stopped"
}

cmd_kill() {
  local name="$1" pid
  pid="$(pid_of "$name" "$(marker_of "$name")")" || die "$name is not running"
  kill -KILL "$pid"
  wait_gone "$pid" 10 || die "$name (pid $pid) survived SIGKILL"
  echo "$name killed (pid $pid)"
}

known() {
  [[ "$1" == zookeeper ]] || ch_index "$1" >/dev/null || nats_index "$1" >/dev/null
}

all_components() {
  echo zookeeper
  ch_names
  nats_names
}

start_one() {
  case "$1" in
    zookeeper) zk_start ;;
    ch-*) ch_start "$1" ;;
    nats-*) nats_start "$1" ;;
  esac
}

stop_one() {
  case "$1" in
    ch-*) ch_stop "$1" ;;
    *) proc_stop "$1" ;;
  esac
}

cmd_env() {
  local hosts="" name nats=""
  for name in $(ch_names); do hosts+="${hosts:+,}127.0.0.1:$(ch_tcp_port "$name")"; done
  for name in $(nats_names); do nats+="${nats:+,}nats://127.0.0.1:$((base + 50 + $(nats_index "$name")))"; done
  echo "KEYTRAIL_CLUSTER_CH_HOSTS=$hosts"
  echo "KEYTRAIL_CLUSTER_CH_DSN=clickhouse://$hosts/keytrail"
  echo "KEYTRAIL_CLUSTER_CH_NAME=$cluster"
  echo "KEYTRAIL_CLUSTER_NATS_URLS=$nats"
  echo "KEYTRAIL_CLUSTER_ZOOKEEPER=127.0.0.1:$zk_port"
}

cmd_status() {
  local name pid
  for name in $(all_components); do
    if pid="$(pid_of "$name" "$(marker_of "$name")")"; then
      echo "$name running (pid $pid)"
    else
      echo "$name stopped"
    fi
  done
}

usage() {
  sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
  local cmd="${1:-}" target="${2:-}"
  if [[ -n "$target" ]] && ! known "$target"; then
    die "unknown component '$target' (want zookeeper, $(ch_names | tr '\n' ' ')or nats-1..nats-$nats_count)"
  fi
  local name
  case "$cmd" in
    start)
      if [[ -n "$target" ]]; then
        start_one "$target"
        [[ "$target" != nats-* ]] || nats_wait_healthy "$target"
      else
        for name in $(all_components); do start_one "$name"; done
        for name in $(nats_names); do nats_wait_healthy "$name"; done
      fi
      ;;
    stop)
      if [[ -n "$target" ]]; then
        stop_one "$target"
      else
        # NATS and ClickHouse before ZooKeeper, which the ClickHouse servers talk to.
        for name in $(nats_names) $(ch_names) zookeeper; do stop_one "$name"; done
      fi
      ;;
    kill)
      [[ -n "$target" ]] || die "kill needs a component"
      cmd_kill "$target"
      ;;
    pid)
      [[ -n "$target" ]] || die "pid needs a component"
      pid_of "$target" "$(marker_of "$target")"
      ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
