#!/usr/bin/env bash
# Lints the OpenAPI document (default gen/openapi/keytrail.swagger.json) with the pinned
# @redocly/cli of package-lock.json beside this script and the rules of redocly.yaml. The
# linter is installed into .local/openapi-lint on first use and again when the lock file
# changes. `make openapi-lint` runs this; so does `make test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="$root/.local/openapi-lint"
spec="${1:-$root/gen/openapi/keytrail.swagger.json}"

die() {
  echo "openapi-lint: $*" >&2
  exit 1
}

# A machine with only Go gets Debian's nodejs and npm (Node.js 18.20 on bookworm runs the
# pinned linter as well as 20 does).
"$root/deploy/console/install.sh" node

if ! cmp -s "$here/package-lock.json" "$dir/package-lock.json" || [[ ! -x "$dir/node_modules/.bin/redocly" ]]; then
  echo "openapi-lint: installing the pinned linter into $dir..."
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $dir"
fi

# No usage reports and no update notices: the build machines reach only package registries.
# The boxed notice that Node.js 20 is past its end of life (printed on every run) is dropped.
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT
status=0
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_NOTIFICATIONS=true REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
  "$dir/node_modules/.bin/redocly" lint --config "$here/redocly.yaml" --format=stylish "$spec" \
  2>"$errors" || status=$?
grep -v '[╔║╚]' "$errors" >&2 || true
if ((status != 0)); then
  die "$spec breaks the rules above (tools/openapi-lint/redocly.yaml). The document is generated:
  fix the openapiv2 options in proto/keytrail/v1/*.proto or buf.gen.yaml, then run make proto"
fi
