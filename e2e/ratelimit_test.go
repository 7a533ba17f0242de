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
	// Each command that moves data takes the limits, read by the one size
	// parser and checked before anything else (wal-push too, although
	// the agent would do its upload): a bad value is a usage error naming
	// the flag.
	for _, tc := range []struct{ flags, pos []string }{
		{[]string{"backup", "--pgdata", c.DataDir, "--max-upload-rate", "ten"}, nil},
		{[]string{"agent", "--pgdata", c.DataDir, "--max-upload-rate", "10XB"}, nil},
		{[]string{"wal-push", "--pgdata", c.DataDir, "--max-upload-rate", "-1MiB"}, []string{filepath.Join(c.DataDir, "pg_wal", "000000010000000000000001")}},
		{[]string{"restore", "--pgdata", e.target("never"), "--max-download-rate", "fast"}, nil},
		{[]string{"wal-fetch", "--pgdata", c.DataDir, "--max-download-rate", "0"}, []string{"000000010000000000000001", filepath.Join(e.shared, "never")}},
	} {
		flag := tc.flags[len(tc.flags)-2]
		_, errs, code := e.tidemark(append(append(tc.flags, e.repoArgs()...), tc.pos...)...)
		if code != 2 || !strings.Contains(errs, flag) || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
			t.Errorf("%s with a bad %s: exit %d, %q", tc.flags[0], flag, code, errs)
		}
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
