#!/usr/bin/env bash
# Fails when the committed generated code differs from what `make proto`
# would write: regenerate into a temp dir and compare.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go tool -modfile=tools/go.mod buf generate -o "$tmp"
status=0
while IFS= read -r f; do
	rel=${f#"$tmp"/}
	if ! cmp -s "$f" "$rel"; then
		echo "stale generated code: $rel (run 'make proto' and commit)"
		status=1
	fi
done < <(find "$tmp" -name '*.go')
while IFS= read -r f; do
	[ -f "$tmp/$f" ] || { echo "generated file with no .proto source: $f"; status=1; }
done < <(git ls-files 'proto/*.pb.go')
exit $status
