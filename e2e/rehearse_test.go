package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

// TestRehearse tells a migration that rewrites a table under an ACCESS
// EXCLUSIVE lock from one that does not, on a clone restored from the
// repository while a pgbench load runs on it, and leaves the repository as
// it was.
func TestRehearse(t *testing.T) {
	e := backupEnv(t, false, 0)
	c := e.backupCluster(15, nil)
	testenv.PGBenchInit(t, c, 1)
	c.Exec(t, "CREATE TABLE big (id int PRIMARY KEY, pad text)")
	c.Exec(t, "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
	e.backup(c)
	switchAndWait(t, c)
	before := e.keys("")

	sql := filepath.Join(e.shared, "migration.sql")
	os.WriteFile(sql, []byte("ALTER TABLE big ADD COLUMN r float8 DEFAULT random();\n-- instant: no default\nALTER TABLE big ADD COLUMN c int;\n"), 0o644)
	scratch := filepath.Join(e.shared, "scratch")
	os.MkdirAll(scratch, 0o755)
	out, errs, code := e.tidemark(append([]string{"rehearse", "--json", "--sql", sql, "--load", "-c 2 -b simple-update",
		"--scratch-dir", scratch, "--pgdata", c.DataDir}, e.repoArgs()...)...)
	if code != 0 {
		t.Fatalf("rehearse exit %d: %s\n%s", code, errs, out)
	}
	var reh drill.Rehearsal
	if err := fromJSON(out, "rehearsal", &reh); err != nil {
		t.Fatalf("rehearse --json: %v\n%s", err, out)
	}
	t.Logf("rehearsal: %s", out)
	if len(reh.Statements) != 2 || !reh.OK || reh.Load == nil {
		t.Fatalf("rehearsal: %+v", reh)
	}
	rw, add := reh.Statements[0], reh.Statements[1]
	if !slices.Equal(rw.Rewritten, []string{"public.big"}) || rw.RowsRewritten != 200000 || rw.Lock != "AccessExclusiveLock" {
		t.Errorf("volatile default: %+v", rw)
	}
	if len(add.Rewritten) != 0 || add.RowsRewritten != 0 || add.Lock != "AccessExclusiveLock" {
		t.Errorf("plain ADD COLUMN: %+v", add)
	}
	if rw.WALBytes < 10*add.WALBytes || rw.WALBytes < 8<<20 {
		t.Errorf("WAL: rewrite %d bytes, plain add %d", rw.WALBytes, add.WALBytes)
	}
	if after := e.keys(""); !slices.Equal(after, before) {
		t.Errorf("the rehearsal changed the repository")
	}
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("scratch left behind: %v", ents)
	}
}
