#!/usr/bin/env bash
# The tidemark demo: back up a throwaway PostgreSQL 15 cluster into a local
# (file://) repository while it archives its WAL there, write some rows, note
# the time, write more rows, restore to the noted time into a new directory,
# start it and check that exactly the rows from before that time came back.
#
#   bash scripts/demo.sh          (as root it installs PostgreSQL 15 if missing
#                                  and runs the servers as the postgres user)
#
# It needs Go and PostgreSQL 15 (Debian: apt-get install postgresql-15), takes
# about a minute, leaves nothing behind and exits non-zero if the restore is
# wrong. TIDEMARK_DEMO_KEEP=1 keeps the temporary directory for a look.
set -euo pipefail

cd "$(dirname "$0")/.."
command -v go >/dev/null || export PATH=/usr/local/go/bin:$PATH

if [ -t 1 ]; then
	say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
else
	say() { printf '==> %s\n' "$*"; }
fi
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "Go is not installed: see https://go.dev/doc/install"

pgbin=${TIDEMARK_DEMO_PGBIN:-/usr/lib/postgresql/15/bin}
if [ ! -x "$pgbin/postgres" ] || [ ! -x "$pgbin/psql" ]; then
	[ "$(id -u)" = 0 ] || die "PostgreSQL 15 is not installed: run  sudo apt-get install postgresql-15  (or sudo bash $0)"
	say "installing PostgreSQL 15 from apt"
	apt-get update -qq
	# The demo makes its own cluster: no packaged 15/main to create or start.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
	sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi

# As root, everything PostgreSQL touches runs as the postgres user: the
# server refuses root, and archive_command and restore_command run as the
# server, so the repository must be theirs too.
if [ "$(id -u)" = 0 ]; then
	id postgres >/dev/null 2>&1 || die "no postgres user: install postgresql-15, which creates it"
	as_pg() { runuser -u postgres -- "$@"; }
else
	as_pg() { "$@"; }
fi

tmp=$(mktemp -d /tmp/tidemark-demo.XXXXXX)
chmod 755 "$tmp"
[ "$(id -u)" = 0 ] && chown postgres: "$tmp"
primary=$tmp/primary restored=$tmp/restored
repo="file://$tmp/repo" identity=$tmp/identity.txt
port=$((20000 + RANDOM % 20000))
port2=$((port + 1))

cleanup() {
	local rc=$?
	for d in "$restored" "$primary"; do
		[ -f "$d/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
	done
	if [ -n "${TIDEMARK_DEMO_KEEP:-}" ]; then
		echo "kept $tmp"
	else
		rm -rf "$tmp"
	fi
	[ $rc = 0 ] || echo "demo: FAILED (exit $rc)" >&2
	exit $rc
}
trap cleanup EXIT

say "building tidemark"
go build -o "$tmp/tidemark" ./cmd/tidemark
tm=$tmp/tidemark
t() { as_pg "$tm" "$@"; }
sql() { as_pg "$pgbin/psql" -X -A -t -q -h "$tmp" -p "$1" -U postgres -d postgres -c "$2"; }

say "creating a repository in $tmp/repo (a new age identity in $identity)"
t init --repo "$repo" --identity-out "$identity" --log-level warn >"$tmp/init.log"
grep '^created repository' "$tmp/init.log" | sed 's/^/    /'
echo "    the identity file $identity is the only key: outside a demo, keep it safe"

say "starting a PostgreSQL 15 cluster that archives its WAL with tidemark wal-push"
as_pg "$pgbin/initdb" -D "$primary" -U postgres --auth=trust --no-sync --data-checksums >/dev/null
cat >>"$primary/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$tmp'
wal_level = replica
archive_mode = on
archive_command = '$tm wal-push --repo $repo --identity $identity --log-level warn %p'
fsync = off
EOF
as_pg "$pgbin/pg_ctl" -D "$primary" -l "$tmp/primary.log" -w start >/dev/null

sql "$port" "CREATE TABLE demo (id serial PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())"
sql "$port" "INSERT INTO demo (note) VALUES ('before the backup')"

say "taking a backup"
t backup --repo "$repo" --identity "$identity" --pgdata "$primary" --log-level warn \
	--pg-conn "host=$tmp port=$port user=postgres dbname=postgres" | sed 's/^/    /'

sql "$port" "INSERT INTO demo (note) VALUES ('after the backup 1'), ('after the backup 2')"
noted=$(sql "$port" "SELECT clock_timestamp()")
say "noted the time: $noted"
sql "$port" "INSERT INTO demo (note) VALUES ('after the noted time 1'), ('after the noted time 2'), ('after the noted time 3')"
want=$(sql "$port" "SELECT count(*) FROM demo WHERE at <= '$noted'")
sql "$port" "SELECT id, note, at FROM demo ORDER BY id" | sed 's/^/    primary:  /'

# The WAL holding the last rows must be archived before a restore can reach
# past them: end the segment and wait for archive_command.
seg=$(sql "$port" "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
	last=$(sql "$port" "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
	[[ "$last" > "$seg" || "$last" == "$seg" ]] && break
	sleep 0.1
done
[[ "$last" > "$seg" || "$last" == "$seg" ]] || die "segment $seg was not archived; see $tmp/primary.log"

say "restoring to $noted into $restored"
t restore --repo "$repo" --identity "$identity" --pgdata "$restored" --log-level warn \
	--target-time "$noted" --target-action promote | sed 's/^/    /'

say "starting the restored cluster (it fetches WAL with tidemark wal-fetch and stops at the noted time)"
as_pg "$pgbin/pg_ctl" -D "$restored" -l "$tmp/restored.log" -w \
	-o "-p $port2 -c archive_mode=off -c unix_socket_directories=$tmp" start >/dev/null
for _ in $(seq 600); do
	[ "$(sql "$port2" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
	sleep 0.1
done
[ "$(sql "$port2" "SELECT pg_is_in_recovery()")" = f ] || die "the restored cluster is still recovering; see $tmp/restored.log"

sql "$port2" "SELECT id, note, at FROM demo ORDER BY id" | sed 's/^/    restored: /'
got=$(sql "$port2" "SELECT count(*) FROM demo")
late=$(sql "$port2" "SELECT count(*) FROM demo WHERE at > '$noted'")
if [ "$got" = "$want" ] && [ "$late" = 0 ]; then
	say "OK: the restored cluster has exactly the $want rows written before $noted"
else
	die "the restored cluster has $got rows ($late after the noted time), want $want"
fi
