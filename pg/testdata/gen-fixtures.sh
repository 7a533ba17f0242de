#!/usr/bin/env bash
# gen-fixtures.sh regenerates the real-cluster fixtures under pg/testdata.
#
# It is documentation as much as a tool: the tests never run it, they read the
# files it wrote (committed). Run it as root on a machine with the PostgreSQL
# builds that scripts/deps.sh installs (15 from apt, 16-18 under
# /opt/tidemark/pg/<major>/package/native/bin); the servers run as the
# `postgres` OS user because PostgreSQL refuses root.
#
#   sudo bash pg/testdata/gen-fixtures.sh            # all of 15 16 17 18
#   sudo bash pg/testdata/gen-fixtures.sh 17         # one major
#
# For each major it writes pg/testdata/pg<major>/:
#   pg_control            global/pg_control of a running cluster with data
#                         checksums on, copied right after the query below
#   control.json          what the server itself says about that pg_control
#                         (pg_control_system/checkpoint/init/recovery), the
#                         expectations of TestControlFileFixtures
#   pg_control.nochecksums, control.nochecksums.json
#                         the same for a cluster without checksums, copied
#                         after a clean shutdown (state "shut down")
#   wal.head              the first 16 KiB (two WAL pages: the long header and
#                         a short one) of 000000010000000000000001
#   rel.pages             the first pages of a heap relation with checksums on;
#                         rel.json says its relfilenode path and page count
#   backup_label          the label file pg_backup_stop returned, byte for byte
#   *.backup              the backup history file PostgreSQL archived
#   00000002.history, 00000003.history
#                         timeline history files from two promotions
#   server.json           server_version_num, catalog version, LSN text form
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="${TMPDIR:-/tmp}/tidemark-pg-fixtures"
psql=/usr/lib/postgresql/15/bin/psql # any psql >= 13 talks to all of them

bindir() {
	case "$1" in
	15) echo /usr/lib/postgresql/15/bin ;;
	*) echo "${TIDEMARK_DEPS_DIR:-/opt/tidemark}/pg/$1/package/native/bin" ;;
	esac
}

as_pg() { runuser -u postgres -- "$@"; }

q() { # q <sockdir> <port> <sql>: one value, unaligned, no headers
	as_pg env PGTZ=UTC "$psql" -X -A -t -q -h "$1" -p "$2" -U postgres -d postgres -c "$3"
}

control_json_sql="SELECT row_to_json(t) FROM (SELECT * FROM pg_control_system(), pg_control_checkpoint(), pg_control_init(), pg_control_recovery()) t"

start() { # start <bin> <datadir> <sockdir> <port>
	as_pg "$1/pg_ctl" -D "$2" -w -s -l "$2/../server.log" \
		-o "-c listen_addresses='' -c unix_socket_directories='$3' -p $4 -c wal_level=replica -c fsync=off -c archive_mode=on -c archive_command='cp %p $2/../archive/%f'" start
}
stop() { as_pg "$1/pg_ctl" -D "$2" -w -s -m fast stop; }

gen() {
	local major=$1 bin out dir sock port
	bin="$(bindir "$major")"
	out="$here/pg$major"
	dir="$work/$major"
	sock="$dir/sock"
	port=$((54300 + major))
	rm -rf "$dir"
	mkdir -p "$dir/sock" "$dir/archive" "$out"
	chown -R postgres: "$dir"

	# Cluster A: checksums on.
	as_pg "$bin/initdb" -D "$dir/on" --data-checksums --no-sync -U postgres --auth-local=trust >/dev/null 2>&1
	start "$bin" "$dir/on" "$sock" "$port"
	q "$sock" "$port" "CREATE TABLE fixture AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400) g" >/dev/null
	q "$sock" "$port" "CHECKPOINT" >/dev/null
	local relpath
	relpath="$(q "$sock" "$port" "SELECT pg_relation_filepath('fixture')")"
	dd if="$dir/on/$relpath" of="$out/rel.pages" bs=8192 count=3 status=none
	printf '{"path": "%s", "pages": 3}\n' "$relpath" >"$out/rel.json"
	# Nothing writes pg_control between this query and the copy: no checkpoint
	# is due (checkpoint_timeout is minutes) and nothing changes state.
	q "$sock" "$port" "$control_json_sql" >"$out/control.json"
	cp "$dir/on/global/pg_control" "$out/pg_control"
	q "$sock" "$port" "SELECT json_build_object('server_version_num', current_setting('server_version_num')::int, 'catalog_version_no', (SELECT catalog_version_no FROM pg_control_system()), 'lsn_example', pg_current_wal_lsn()::text)" >"$out/server.json"
	head -c 16384 "$dir/on/pg_wal/000000010000000000000001" >"$out/wal.head"

	local startfn stopfn
	if [ "$major" -ge 15 ]; then startfn=pg_backup_start stopfn=pg_backup_stop; else startfn=pg_start_backup stopfn=pg_stop_backup; fi
	# One session: a non-exclusive backup ends with the session that began it.
	as_pg env PGTZ=UTC "$psql" -X -A -t -q -h "$sock" -p "$port" -U postgres -d postgres >"$out/backup_label.b64" <<-SQL
		SELECT $startfn('tidemark fixture', true) \g /dev/null
		SELECT encode(convert_to(labelfile, 'UTF8'), 'base64') FROM $stopfn(true);
	SQL
	base64 -d "$out/backup_label.b64" >"$out/backup_label"
	rm -f "$out/backup_label.b64" "$out"/*.backup
	# With archiving off PostgreSQL deletes the backup history file at once,
	# hence archive_mode=on and this copy from the archive.
	cp "$dir/archive/"*.backup "$out/"
	stop "$bin" "$dir/on"

	# Two promotions of a standby with nothing to follow make timelines 2 and 3.
	local i
	for i in 1 2; do
		as_pg touch "$dir/on/standby.signal"
		start "$bin" "$dir/on" "$sock" "$port"
		as_pg "$bin/pg_ctl" -D "$dir/on" -w -s promote
		q "$sock" "$port" "CHECKPOINT" >/dev/null
		stop "$bin" "$dir/on"
	done
	cp "$dir/on/pg_wal/00000002.history" "$dir/on/pg_wal/00000003.history" "$out/"

	# Cluster B: no checksums, pg_control copied after a clean shutdown. The
	# restart afterwards only changes state and time in pg_control; the
	# checkpoint fields the query reports are the shutdown checkpoint's.
	# PostgreSQL 18 turned data checksums on by default.
	local nosum=()
	[ "$major" -lt 18 ] || nosum=(--no-data-checksums)
	as_pg "$bin/initdb" -D "$dir/off" "${nosum[@]}" --no-sync -U postgres --auth-local=trust >/dev/null 2>&1
	start "$bin" "$dir/off" "$sock" "$port"
	stop "$bin" "$dir/off"
	cp "$dir/off/global/pg_control" "$out/pg_control.nochecksums"
	start "$bin" "$dir/off" "$sock" "$port"
	q "$sock" "$port" "$control_json_sql" >"$out/control.nochecksums.json"
	stop "$bin" "$dir/off"

	chmod 644 "$out"/*
	chown -R --reference="$here" "$out"
	echo "pg$major: done"
}

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(15 16 17 18)
for m in "${majors[@]}"; do gen "$m"; done
rm -rf "$work"
