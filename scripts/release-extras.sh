#!/usr/bin/env bash
# Writes what a release ships besides the binary, into .release/ (goreleaser.yaml
# runs it before the builds): the man page and the shell completions, rendered
# by tidemark itself from its command tree, and the systemd units as the
# packages install them (the binary in /usr/bin rather than /usr/local/bin,
# where contrib/systemd's units expect a manual install).
set -euo pipefail

cd "$(dirname "$0")/.."
out=.release
rm -rf "$out"
mkdir -p "$out/man" "$out/completions" "$out/systemd"

go build -o "$out/tidemark" ./cmd/tidemark
"$out/tidemark" man >"$out/man/tidemark.8"
gzip -9 -n -c "$out/man/tidemark.8" >"$out/man/tidemark.8.gz"
for sh in bash zsh fish; do
	"$out/tidemark" completion "$sh" >"$out/completions/tidemark.$sh"
done
for unit in contrib/systemd/*.service contrib/systemd/*.timer; do
	sed 's|/usr/local/bin/tidemark|/usr/bin/tidemark|g' "$unit" >"$out/systemd/$(basename "$unit")"
done
rm "$out/tidemark"
