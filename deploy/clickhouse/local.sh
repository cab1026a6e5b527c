#!/usr/bin/env bash
# Project-local ClickHouse for keytrail's tests and `make run`.
#
# The only ClickHouse installable here is Debian bookworm's clickhouse-server 18.16, and there is no
# systemd, so this runs /usr/sbin/clickhouse-server as a plain background process with its own config,
# data, logs and pid file under KEYTRAIL_CH_DIR. Several instances can run side by side: give each
# its own KEYTRAIL_CH_DIR and ports.
#
# Usage: deploy/clickhouse/local.sh install|start|stop|status|client [clickhouse-client args...]
#
# Settings (environment):
#   KEYTRAIL_CH_DIR               state dir (default <repo>/.local/clickhouse)
#   KEYTRAIL_CH_TCP_PORT          native protocol port (default 19000)
#   KEYTRAIL_CH_HTTP_PORT         HTTP port, also used for /ping (default 18123)
#   KEYTRAIL_CH_INTERSERVER_PORT  replication port (default 19009)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$script_dir/../.." && pwd)"
# shellcheck source=deploy/common.sh
source "$repo/deploy/common.sh"

server_bin=/usr/sbin/clickhouse-server
client_bin=/usr/bin/clickhouse-client

ch_dir="${KEYTRAIL_CH_DIR:-$repo/.local/clickhouse}"
tcp_port="${KEYTRAIL_CH_TCP_PORT:-19000}"
http_port="${KEYTRAIL_CH_HTTP_PORT:-18123}"
interserver_port="${KEYTRAIL_CH_INTERSERVER_PORT:-19009}"

# The stop check matches the config path inside /proc/<pid>/cmdline, so it must be one fixed,
# absolute spelling of the directory whatever the caller passed.
ch_dir="$(realpath -m -- "$ch_dir")"
config_file="$ch_dir/etc/config.xml"
users_file="$ch_dir/etc/users.xml"
pid_file="$ch_dir/clickhouse-server.pid"
log_dir="$ch_dir/log"
stdout_log="$log_dir/stdout.log"
error_log="$log_dir/clickhouse-server.err.log"

start_timeout=60
stop_timeout=30

die() {
  echo "local.sh: $*" >&2
  exit 1
}

check_settings() {
  local name value
  for name in tcp_port http_port interserver_port; do
    value="${!name}"
    [[ "$value" =~ ^[0-9]+$ ]] && ((value > 0 && value < 65536)) ||
      die "$name must be a port number, got '$value'"
  done
  [[ "$tcp_port" != "$http_port" && "$tcp_port" != "$interserver_port" && "$http_port" != "$interserver_port" ]] ||
    die "tcp, http and interserver ports must differ (got $tcp_port, $http_port, $interserver_port)"
  # The dir is pasted into XML as is.
  [[ "$ch_dir" != *[\&\<\>\"\']* ]] || die "KEYTRAIL_CH_DIR must not contain & < > \" or ': $ch_dir"
}

ping() {
  curl -sf --max-time 2 "http://127.0.0.1:$http_port/ping" >/dev/null 2>&1
}

# Prints the pid from the pid file if that process is our server: clickhouse-server started with
# this instance's config file.
our_pid() {
  verified_pid "$pid_file" "--config-file=$config_file" clickhouse-server
}

cmd_install() {
  # curl is how this script (and deploy/local/run.sh) asks the servers whether they are ready;
  # a minimal image with only Go may lack it.
  local packages=()
  [[ -x "$server_bin" && -x "$client_bin" ]] || packages+=(clickhouse-server clickhouse-client)
  command -v curl >/dev/null 2>&1 || packages+=(curl)
  if ((${#packages[@]} == 0)); then
    return 0
  fi
  apt_install "${packages[@]}"
  [[ -x "$server_bin" ]] || die "apt-get finished but $server_bin is missing"
}

# Writes KEYTRAIL_CH_DIR/etc/{config,users}.xml from the templates next to this script.
write_config() {
  mkdir -p "$ch_dir/etc" "$ch_dir/data" "$ch_dir/tmp" "$ch_dir/user_files" "$ch_dir/format_schemas" "$log_dir"
  local conf
  conf="$(<"$script_dir/config.xml")"
  # Quoted replacements: bash 5.2 would otherwise expand & in them.
  conf="${conf//@DIR@/"$ch_dir"}"
  conf="${conf//@TCP_PORT@/"$tcp_port"}"
  conf="${conf//@HTTP_PORT@/"$http_port"}"
  conf="${conf//@INTERSERVER_PORT@/"$interserver_port"}"
  if [[ "$conf" =~ @[A-Z_]+@ ]]; then
    die "unknown placeholder ${BASH_REMATCH[0]} in $script_dir/config.xml"
  fi
  printf '%s\n' "$conf" >"$config_file.new"
  mv "$config_file.new" "$config_file"
  cp "$script_dir/users.xml" "$users_file"
}

ready_line() {
  echo "ClickHouse ready at tcp 127.0.0.1:$tcp_port (DSN clickhouse://127.0.0.1:$tcp_port)"
}

cmd_start() {
  cmd_install
  write_config

  if ping; then
    # A server answering on the HTTP port is only the one the caller wants if it also listens
    # on the TCP port: catches KEYTRAIL_CH_TCP_PORT changed without KEYTRAIL_CH_HTTP_PORT.
    tcp_open "$tcp_port" || die "a server answers on http port $http_port but nothing listens on tcp port $tcp_port: set KEYTRAIL_CH_HTTP_PORT (and KEYTRAIL_CH_INTERSERVER_PORT) for this instance too"
    if our_pid >/dev/null; then
      echo "ClickHouse already running (pid $(our_pid), dir $ch_dir)"
    else
      echo "a ClickHouse server already answers on http port $http_port (not started from $ch_dir); using it"
    fi
    ready_line
    return 0
  fi

  local pid
  if pid="$(our_pid)"; then
    # Alive but not answering: still starting, or wedged. Let the wait below decide.
    echo "ClickHouse (pid $pid) is running but not answering yet; waiting"
  else
    rm -f "$pid_file"
    # setsid: own session, so Ctrl-C in the terminal that ran `make test` does not take the
    # server down with it. The script is non-interactive (no job control), so the child is not a
    # process group leader and setsid execs in place: $! is the server's pid.
    # Runs as the invoking user; 18.16 is fine running as root.
    nohup setsid "$server_bin" --config-file="$config_file" </dev/null >>"$stdout_log" 2>&1 &
    pid=$!
    echo "$pid" >"$pid_file"
  fi

  local deadline=$((SECONDS + start_timeout))
  until ping; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "clickhouse-server (pid $pid) exited during startup" >&2
      show_logs
      rm -f "$pid_file"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "clickhouse-server (pid $pid) not ready on http port $http_port after ${start_timeout}s" >&2
      show_logs
      exit 1
    fi
    sleep 0.2
  done
  # Confirms the pid file names the process that answers (see the setsid note above).
  our_pid >/dev/null || die "server answers but pid file $pid_file does not match a clickhouse-server with $config_file"
  ready_line
}

show_logs() {
  local f
  for f in "$error_log" "$stdout_log"; do
    if [[ -s "$f" ]]; then
      echo "last lines of $f:" >&2
      tail -n 30 "$f" >&2
    fi
  done
}

cmd_stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$pid_file"
    if ping; then
      echo "ClickHouse from $ch_dir is not running, but something else answers on http port $http_port (left alone)"
    else
      echo "ClickHouse from $ch_dir is not running"
    fi
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + stop_timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      # Re-check before the hard kill: the pid must still be our server.
      if our_pid >/dev/null; then
        echo "clickhouse-server (pid $pid) still running after ${stop_timeout}s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
  echo "ClickHouse stopped (pid $pid, dir $ch_dir)"
}

cmd_status() {
  if ping; then
    local pid
    if pid="$(our_pid)"; then
      echo "ClickHouse running (pid $pid, dir $ch_dir), tcp 127.0.0.1:$tcp_port, http 127.0.0.1:$http_port"
    else
      echo "a ClickHouse server answers on http 127.0.0.1:$http_port (not started from $ch_dir)"
    fi
    return 0
  fi
  echo "ClickHouse not answering on http 127.0.0.1:$http_port"
  return 1
}

cmd_client() {
  [[ -x "$client_bin" ]] || die "$client_bin missing: run $0 install"
  exec "$client_bin" --host 127.0.0.1 --port "$tcp_port" "$@"
}

usage() {
  sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
  local cmd="${1:-}"
  (($# > 0)) && shift
  case "$cmd" in
    install) cmd_install ;;
    start)
      check_settings
      cmd_start
      ;;
    stop) cmd_stop ;;
    status)
      check_settings
      cmd_status
      ;;
    client) cmd_client "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
