package e2e

import (
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestMarkThenRestore: a mark made before a destructive migration is in
// the archive when mark returns, and a restore to it gets the data back.
// A server that cannot archive the mark is refused with exit 8.
func TestMarkThenRestore(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, nil)
	c.Exec(t, "CREATE TABLE t (id serial, batch text)")
	c.Exec(t, "INSERT INTO t (batch) VALUES ('base')")
	e.backup(c)
	c.Exec(t, "INSERT INTO t (batch) VALUES ('before')")

	out := e.mustTidemark(append(append([]string{"mark", "--pg-conn", c.ConnString()}, e.repoArgs()...), "before-migration")...)
	if !strings.Contains(out, "before-migration") || !strings.Contains(out, "archived") {
		t.Errorf("mark printed %q", out)
	}
	// The migration goes wrong.
	c.Exec(t, "INSERT INTO t (batch) VALUES ('after')")
	c.Exec(t, "ALTER TABLE t DROP COLUMN batch")

	dir := e.target("before-migration")
	e.restore(dir, "--target-name", "before-migration", "--target-action", "promote")
	r := e.start(15, dir, false)
	waitRecovered(t, r)
	if got := batches(t, r); got != "base:1,before:1" {
		t.Errorf("restored to the mark: %s", got)
	}

	off := testenv.NewCluster(t, testenv.PGConfig{Version: 15, Settings: map[string]string{"archive_mode": "off"}})
	_, errs, code := e.tidemark(append(append([]string{"mark", "--pg-conn", off.ConnString()}, e.repoArgs()...), "m")...)
	if code != 8 || !strings.Contains(errs, "archive_mode") {
		t.Errorf("mark without archiving: exit %d, %s", code, errs)
	}
}
