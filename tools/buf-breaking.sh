#!/usr/bin/env bash
# buf breaking: proto/ as it is in the work tree against the protos of a baseline commit,
# with the rules of buf.yaml (FILE: no field, message, service or method removed, renamed,
# renumbered or retyped; vendored protos ignored).
#
# The baseline, in this order:
#   1. $KEYTRAIL_BREAKING_AGAINST, any commit-ish (a release tag, origin/main, ...);
#   2. on a branch: where it left main (git merge-base HEAD main, or origin/main), so the
#      whole branch is compared with what it will land on;
#   3. on main itself (CI's clone): the previous commit, HEAD~1.
# A clone without that history (shallow, or a single commit) skips the check and says so.
# An intended breaking change passes when a commit message since the baseline has a line
#   Proto-Breaking: <why, and what callers must do>
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
buf="$root/.local/bin/buf"
cd "$root"

skip() { echo "buf-breaking: SKIPPED: $*"; exit 0; }

git rev-parse --git-dir >/dev/null 2>&1 || skip "not a git checkout"
head="$(git rev-parse HEAD)"
against="${KEYTRAIL_BREAKING_AGAINST:-}"
if [[ -z "$against" ]]; then
  for ref in main origin/main; do
    if base="$(git merge-base HEAD "$ref" 2>/dev/null)" && [[ "$base" != "$head" ]]; then
      against="$base"
      break
    fi
  done
fi
if [[ -z "$against" ]]; then
  against="$(git rev-parse -q --verify 'HEAD~1^{commit}')" ||
    skip "this clone has no commit before HEAD (shallow?): nothing to compare proto/ with"
fi
against="$(git rev-parse --verify "$against^{commit}")"

if intent="$(git log --format=%B "$against..HEAD" | grep -m1 -i '^Proto-Breaking:')"; then
  skip "a commit since ${against:0:12} declares a breaking change: $intent"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! git archive "$against" buf.yaml proto 2>/dev/null | tar -x -C "$tmp"; then
  skip "${against:0:12} has no buf.yaml and proto/ to compare with"
fi
if ! "$buf" breaking --against "$tmp"; then
  echo "buf-breaking: proto/ breaks the API or event contract of ${against:0:12} (above)." >&2
  echo "  Keep the old field/method (add a new one, deprecate the old), or, if the break is" >&2
  echo "  intended, say so in the commit message: 'Proto-Breaking: <why, what callers must do>'." >&2
  exit 1
fi
echo "buf-breaking: proto/ is compatible with ${against:0:12}"
