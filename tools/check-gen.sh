#!/usr/bin/env bash
# Checks that gen/ is what `make proto` makes of proto/ now: regenerates into a temporary
# directory with the pinned buf and plugins (.local/bin) and compares. Every generated file
# must match, and gen/ may hold no generated file that proto/ no longer makes; the
# hand-written files (gen/README.md, gen/openapi/embed.go) are left alone.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.local/bin"
cd "$root"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
PATH="$bin:$PATH" "$bin/buf" generate --output "$tmp"

handwritten=(gen/README.md gen/openapi/embed.go)
stale=()
while IFS= read -r f; do
  [[ " ${handwritten[*]} " == *" $f "* ]] && continue
  [[ -e "$tmp/$f" ]] || stale+=("$f")
done < <(find gen -type f | sort)

diff -r -q "$tmp/gen" gen | grep -v '^Only in gen' >"$tmp/diff.txt" || true
if [[ -s "$tmp/diff.txt" || ${#stale[@]} -gt 0 ]]; then
  echo "check-gen: gen/ does not match proto/:" >&2
  sed 's/^/  /' "$tmp/diff.txt" >&2
  diff -ru "$tmp/gen" gen 2>/dev/null | grep -v '^Only in gen' | head -40 | sed 's/^/    /' >&2 || true
  for f in ${stale[@]+"${stale[@]}"}; do echo "  $f is generated from no proto any more" >&2; done
  echo "check-gen: run 'make proto' and commit gen/ with the proto change (remove stale files by hand)." >&2
  exit 1
fi
echo "check-gen: gen/ matches proto/"
