# Shell functions the deploy scripts share; sourced by deploy/clickhouse/local.sh,
# deploy/cluster/local.sh and deploy/console/install.sh, not run on its own.
# shellcheck shell=bash

# apt_install PACKAGE...: installs Debian packages, as root or through sudo. The project's two
# commands must work on a fresh machine with only Go: whatever else they need comes this way.
apt_install() {
  local sudo=()
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "$(basename "$0"): installing $* needs root (no sudo here): run as root
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $*" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  echo "installing $* (Debian packages)..."
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# verified_pid PID_FILE ARG [EXE]: prints the pid in PID_FILE if that process is alive, has ARG
# as one of its arguments (a configuration path only the server we started has) and, given
# EXE, runs an executable whose path ends in EXE. PIDs wrap quickly on a busy machine (pid_max
# 32768 here), so a pid file proves nothing until the command line says whose it is: check
# before signalling. internal/testenv's ProcessMatches is the same check for Go tests.
verified_pid() {
  local pid_file="$1" want="$2" exe="${3:-}" pid arg args=()
  [[ -f "$pid_file" ]] || return 1
  pid="$(<"$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  mapfile -d '' args 2>/dev/null <"/proc/$pid/cmdline" || return 1
  ((${#args[@]} > 0)) || return 1
  [[ -z "$exe" || "${args[0]}" == *"$exe" ]] || return 1
  for arg in "${args[@]:1}"; do
    if [[ "$arg" == "$want" ]]; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# tcp_open PORT: whether something accepts connections on 127.0.0.1:PORT.
tcp_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
