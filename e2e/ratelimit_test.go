package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestBandwidthLimits: with --max-upload-rate on backup and the agent (which
// archive_command's wal-push asks), and --max-download-rate on
// restore and the restore_command it writes, a backup and a point-in-time
// restore from MinIO come out whole; a bad rate is a usage error naming the
// flag. How much the limits slow things is measured, not asserted.
func TestBandwidthLimits(t *testing.T) {
	e := backupEnv(t, true, 0)
	c := e.backupCluster(15, map[string]string{"archive_timeout": "0"})
	_, errs, code := e.tidemark(append([]string{"backup", "--pgdata", c.DataDir, "--max-upload-rate", "ten"}, e.repoArgs()...)...)
	if code != 2 || !strings.Contains(errs, "--max-upload-rate") || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
		t.Fatalf("a bad rate: exit %d, %q", code, errs)
	}
	e.heartbeatAgent(c, "--max-upload-rate", "20MiB")
	testenv.LoadRandomTable(t, c, "data", 20000)
	e.backup(c, "--max-upload-rate", "20MiB")
	want := testenv.TableChecksum(t, c, "data")
	c.Exec(t, "CREATE TABLE after_backup AS SELECT 1 AS x")
	switchAndWait(t, c)

	dir := e.target("restored")
	e.restore(dir, "--max-download-rate", "30MiB", "--target", "immediate", "--target-action", "promote")
	conf, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "--max-download-rate 30MiB") {
		t.Errorf("restore_command does not carry the download limit:\n%s", conf)
	}
	testenv.ChownToServer(t, dir)
	r := e.start(15, dir, false)
	waitRecovered(t, r)
	if got := testenv.TableChecksum(t, r, "data"); got != want {
		t.Errorf("restored table differs: %s, want %s", got, want)
	}
}
