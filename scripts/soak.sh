#!/usr/bin/env bash
# The soak, run by `make soak`; not part of CI (about three and a half hours
# on 2 cores). It needs what scripts/deps.sh installs.
#
#  1. TestSoak (e2e/soak_test.go): TIDEMARK_SOAK_DURATION (default 30m) of
#     pgbench, archiving, heartbeat, backups (some killed with SIGKILL),
#     expire and gc at once, then verify --read-data, a drill of every kept
#     snapshot and TIDEMARK_SOAK_PITR (default 20) exact point-in-time
#     recoveries. Its last line gives the counts. Where the build has
#     `tidemark wal-receive` (issue 18, not on main yet when the soak was
#     written), it streams throughout; the counts say whether it ran.
#  2. The randomized incremental-equivalence test (backup/equivalence_test.go)
#     over TIDEMARK_SOAK_SEEDS seeds (default 100): seeds 1..N, each
#     reproducible with TIDEMARK_TEST_SEED=N.
#
# Exits non-zero if either fails; a failed seed does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
seeds=${TIDEMARK_SOAK_SEEDS:-100}
status=0

echo "soak: TestSoak"
if ! TIDEMARK_SOAK=1 go test -count=1 -timeout 600m -v -run '^TestSoak$' ./e2e/; then
	echo "soak: TestSoak FAILED"
	status=1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/backup.test" ./backup/ || exit 1
failed=()
start=$(date +%s)
for seed in $(seq 1 "$seeds"); do
	if (cd backup && TIDEMARK_TEST_SEED=$seed "$tmp/backup.test" -test.run '^TestIncrementalEquivalence$' -test.count=1 >"$tmp/seed.log" 2>&1); then
		echo "soak: equivalence seed $seed ok"
	else
		echo "soak: equivalence seed $seed FAILED (TIDEMARK_TEST_SEED=$seed reproduces it):"
		tail -40 "$tmp/seed.log"
		failed+=("$seed")
	fi
done
echo "soak: incremental equivalence over $seeds seeds in $(( $(date +%s) - start )) s: ${#failed[@]} failed ${failed[*]:-}"
if [ "${#failed[@]}" -gt 0 ]; then
	status=1
fi
exit $status
