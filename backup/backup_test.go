package backup

import (
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestFullBackupRestores backs up a pgbench database, restores the
// snapshot and checks that the restored cluster starts and has the same
// data.
func TestFullBackupRestores(t *testing.T) {
	for _, v := range []int{15, 17} {
		t.Run("pg"+itoa(v), func(t *testing.T) {
			t.Parallel()
			c, a := newCluster(t, v, nil)
			testenv.PGBenchInit(t, c, 2)
			want := testenv.DatabaseFingerprint(t, c)
			r := newTestRepo(t, 1<<20)
			res := mustBackup(t, r, backupOpts(t, c, a))
			if res.Snapshot.Type != "full" || res.Method != MethodFull {
				t.Fatalf("first backup is %s by %s, want full", res.Snapshot.Type, res.Method)
			}
			rc := restoreSnapshot(t, r.Repo, res.Snapshot, a, v, false)
			if got := testenv.DatabaseFingerprint(t, rc); got != want {
				t.Fatalf("restored fingerprint %s, want %s", got, want)
			}
		})
	}
}
