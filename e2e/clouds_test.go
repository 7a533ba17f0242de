package e2e

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
)

// TestCloudBackends runs the life of a repository on Azure Blob Storage
// (Azurite) and Google Cloud Storage (fake-gcs-server): WAL archived by
// wal-push, two full backups, expire and gc (which must delete the first
// backup's packs), verify --read-data, and a point-in-time restore after
// the newest backup that must hold exactly the commits before the target.
func TestCloudBackends(t *testing.T) {
	backends := []string{"azure", "gcs"}
	if os.Getenv("TIDEMARK_E2E_COMPARE_S3") != "" {
		backends = append(backends, "s3") // the same run on MinIO, for the numbers
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newBackendEnv(t, backend, repo.InitOptions{PackSize: 128 << 10})
			c := e.backupCluster(15, nil)
			testenv.LoadRandomTable(t, c, "data", 20000)
			c.Exec(t, "CREATE TABLE t (id serial, batch text)")
			start := time.Now()
			e.backup(c, "--full")
			first := time.Since(start)
			c.Exec(t, "UPDATE data SET payload = md5(payload)")
			start = time.Now()
			e.backup(c, "--full")
			second := time.Since(start)
			ins := func(b string) { c.Exec(t, "INSERT INTO t (batch) SELECT $1 FROM generate_series(1, 10)", b) }
			ins("a")
			afterA := c.QueryString(t, "SELECT clock_timestamp()")
			time.Sleep(100 * time.Millisecond)
			ins("b")
			switchAndWait(t, c)

			e.mustTidemark(append([]string{"expire", "--keep-last", "1"}, e.repoArgs()...)...)
			_, packBytes := e.count("data/")
			out := e.mustTidemark(append([]string{"gc", "--json", "--grace", "1s", "--wait", "1m"}, e.repoArgs()...)...)
			var g gcJSON
			if err := json.Unmarshal([]byte(out), &g); err != nil {
				t.Fatalf("gc --json: %v\n%s", err, out)
			}
			if _, after := e.count("data/"); g.Deleted.Packs == 0 || after >= packBytes {
				t.Fatalf("gc after expire deleted %d packs (%d -> %d bytes of data packs)", g.Deleted.Packs, packBytes, after)
			}
			start = time.Now()
			e.verify(0, "--read-data")
			verify := time.Since(start)

			dir := e.target("pitr")
			start = time.Now()
			e.restore(dir, "--target-time", afterA, "--target-action", "promote")
			restore := time.Since(start)
			r := e.start(15, dir, false)
			waitRecovered(t, r)
			if got := batches(t, r); got != "a:10" {
				t.Errorf("restore to %s on %s: batches %s, want a:10", afterA, backend, got)
			}
			r.Stop()
			n, size := e.count("")
			t.Logf("%s: full backup %v, second full %v, verify --read-data %v, restore %v; %d objects, %d bytes after gc",
				backend, first.Round(time.Millisecond), second.Round(time.Millisecond), verify.Round(time.Millisecond),
				restore.Round(time.Millisecond), n, size)
		})
	}
}
