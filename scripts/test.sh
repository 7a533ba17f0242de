#!/usr/bin/env bash
# The test command: every test of the module, then a short fuzz run of every
# fuzz target. Fails if any step fails. Run as root, it first installs what is
# missing with scripts/deps.sh (idempotent, a fraction of a second when
# everything is there), so it works on a fresh machine; otherwise run
# `sudo bash scripts/deps.sh` once yourself. TIDEMARK_NO_DEPS=1 skips that step.
#
#   bash scripts/test.sh              # all packages
#   bash scripts/test.sh ./storage/... # some packages
#   FUZZTIME=1m bash scripts/test.sh   # longer fuzzing (default 4s per target: a smoke run in CI)
set -euo pipefail

cd "$(dirname "$0")/.."
command -v go >/dev/null || { [ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH; }

if [ "$(id -u)" = 0 ] && [ -z "${TIDEMARK_NO_DEPS:-}" ]; then
	bash scripts/deps.sh
fi
# deps.sh puts MinIO, versitygw and staticcheck in Go's bin directory.
gobin=$(go env GOBIN)
export PATH="${gobin:-$(go env GOPATH)/bin}:$PATH"

fuzztime=${FUZZTIME:-4s}
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(./...)

since() { awk -v now="$EPOCHREALTIME" -v t="$1" 'BEGIN { printf "%.1fs", now - t }'; }

t=$EPOCHREALTIME
# The timeout is a kill switch for a hung test, not a speed bound: e2e takes
# about 15 minutes on a quiet 2-core machine and passed 25 under load.
echo "test: go test -count=1 -timeout 45m ${pkgs[*]}"
go test -count=1 -timeout 45m "${pkgs[@]}"
echo "test: go test done in $(since "$t")"

# go test -list prints each package's matching names, then its "ok" line
# naming the package; a package without tests prints "?" and nothing else.
t=$EPOCHREALTIME
list=$(go test -list '^Fuzz' "${pkgs[@]}")
targets=$(awk '
	/^Fuzz/ { names[n++] = $1; next }
	/^ok[ \t]/ { for (i = 0; i < n; i++) print $2, names[i]; n = 0; next }
	{ n = 0 }
' <<<"$list")

if [ -z "$targets" ]; then
	echo "test: no fuzz targets"
	exit 0
fi
count=$(wc -l <<<"$targets")
echo "test: fuzzing $count targets for $fuzztime each"
# fuzz_one PKG NAME: one target per run (go test -fuzz takes one target and
# one package). Go 1.26's fuzz coordinator can report a bare "context
# deadline exceeded" as the -fuzztime deadline passes on a busy machine
# (go.dev/issue/75804, fixed in Go 1.27): no input failed and none is
# written. That alone is retried once and then reported as a warning; a
# written failing input, a panic or any other failure fails the run.
fuzz_one() {
	local pkg=$1 name=$2 out rc attempt
	for attempt in 1 2; do
		rc=0
		out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1) || rc=$?
		printf '%s\n' "$out"
		[ $rc = 0 ] && return 0
		if ! grep -q 'context deadline exceeded' <<<"$out" || grep -q 'Failing input written' <<<"$out"; then
			return $rc
		fi
		echo "test: $name: the fuzz coordinator's deadline race (go.dev/issue/75804), no failing input; attempt $attempt"
	done
	echo "test: warning: $name hit the coordinator's deadline race twice; no failing input was found"
}
while read -r pkg name; do
	echo "test: fuzz $pkg $name"
	fuzz_one "$pkg" "$name"
done <<<"$targets"
echo "test: fuzzing done in $(since "$t")"
