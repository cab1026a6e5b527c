#!/usr/bin/env bash
# Installs what the web console's build check and browser test need, when missing, from
# Debian's packages (like deploy/clickhouse/local.sh does for ClickHouse):
#
#   deploy/console/install.sh chromium   # /usr/bin/chromium, for TestConsoleInBrowser
#   deploy/console/install.sh node       # node and npm, for `make console` / `make console-check`
#
# The console itself needs neither at run time: its bundle is committed and embedded.
set -euo pipefail

# shellcheck source=deploy/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/common.sh"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

case "${1:-}" in
  chromium)
    [[ -x /usr/bin/chromium ]] || apt_install chromium
    [[ -x /usr/bin/chromium ]] || die "apt-get finished but /usr/bin/chromium is missing"
    ;;
  node)
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
      apt_install nodejs npm
    fi
    command -v npm >/dev/null 2>&1 || die "apt-get finished but npm is missing"
    ;;
  *)
    sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
