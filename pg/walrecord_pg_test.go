package pg_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
)

// TestLastCommitTimeRealWAL checks the WAL reader against segments written by
// real servers: the last commit time it finds in a switched segment is the
// commit timestamp PostgreSQL recorded for the last transaction.
func TestLastCommitTimeRealWAL(t *testing.T) {
	for _, v := range []int{15, 17} {
		t.Run("pg"+strconv.Itoa(v), func(t *testing.T) {
			c := testenv.NewCluster(t, testenv.PGConfig{Version: v, Settings: map[string]string{"track_commit_timestamp": "on"}})
			c.Exec(t, "CREATE TABLE t (id int, pad text)")
			// Full-page images and multi-page records on the way.
			c.Exec(t, "CHECKPOINT")
			c.Exec(t, "INSERT INTO t SELECT g, repeat('x', 3000) FROM generate_series(1, 2000) g")
			for i := range 5 {
				c.Exec(t, "INSERT INTO t VALUES ($1, 'y')", i)
			}
			want := c.QueryString(t, "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin))::numeric * 1000000 FROM t WHERE id = 4 AND pad = 'y'")
			seg := c.QueryString(t, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
			c.Exec(t, "SELECT pg_switch_wal()")
			data, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", seg))
			if err != nil {
				t.Fatal(err)
			}
			got, found, err := pg.LastCommitTime(data)
			if err != nil || !found {
				t.Fatalf("segment %s: found %v, %v", seg, found, err)
			}
			us, err := strconv.ParseFloat(want, 64)
			if err != nil {
				t.Fatalf("commit timestamp %q: %v", want, err)
			}
			if w := time.UnixMicro(int64(us)); !got.Equal(w) {
				t.Errorf("last commit %v, PostgreSQL says %v", got, w)
			}
		})
	}
}
