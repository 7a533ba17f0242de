package backup

import (
	"path/filepath"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/directio"
	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestFullBackupRestores backs up a pgbench database, restores the
// snapshot and checks that the restored cluster starts and has the same
// data. On 17 the relation files are read with O_DIRECT (--direct-io), on
// 15 through the page cache (the default).
func TestFullBackupRestores(t *testing.T) {
	for _, v := range []int{15, 17} {
		t.Run("pg"+itoa(v), func(t *testing.T) {
			t.Parallel()
			c, a := newCluster(t, v, nil)
			testenv.PGBenchInit(t, c, 2)
			want := testenv.DatabaseFingerprint(t, c)
			r := newTestRepo(t, 1<<20)
			opts := backupOpts(t, c, a)
			opts.DirectIO = v == 17
			res := mustBackup(t, r, opts)
			if res.Snapshot.Type != "full" || res.Method != MethodFull {
				t.Fatalf("first backup is %s by %s, want full", res.Snapshot.Type, res.Method)
			}
			switch {
			case !opts.DirectIO && res.Stats.DirectBytes != 0:
				t.Errorf("without --direct-io: %d bytes read with O_DIRECT", res.Stats.DirectBytes)
			case opts.DirectIO && directio.Supported(filepath.Dir(c.DataDir)) && res.Stats.DirectBytes < res.Stats.ReadBytes/2:
				t.Errorf("%d of %d bytes read with O_DIRECT, want most (the relation files)", res.Stats.DirectBytes, res.Stats.ReadBytes)
			}
			rc := restoreSnapshot(t, r.Repo, res.Snapshot, a, v, false)
			if got := testenv.DatabaseFingerprint(t, rc); got != want {
				t.Fatalf("restored fingerprint %s, want %s", got, want)
			}
		})
	}
}
