package backup

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// TestBigDirectory: a database directory of more relation files than one
// tree holds is stored in parts; an incremental after files were added
// and removed stores only the parts that changed, and both snapshots hold
// exactly the directory's files.
func TestBigDirectory(t *testing.T) {
	c, a := newCluster(t, 15, nil)
	c.Exec(t, "CREATE DATABASE many")
	c.ExecDB(t, "many", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
	oid := c.QueryString(t, "SELECT oid FROM pg_database WHERE datname = 'many'")
	dir := filepath.Join(c.DataDir, "base", oid)
	n := 3000
	pgtest.WriteRelFiles(t, dir, 3000000000, n, 1)
	r := newTestRepo(t, 4<<20)
	opts := backupOpts(t, c, a)
	opts.partMax = 512    // parts of at most 512 entries: a directory of 3000 is a big one
	opts.namesBatch = 700 // and its names are listed through sorted runs
	full := mustBackup(t, r, opts)
	fullParts := dbParts(t, r.Repo, full.Snapshot, oid)
	if len(fullParts) < 2 {
		t.Fatalf("base/%s is in %d parts", oid, len(fullParts))
	}
	checkDirFiles(t, r.Repo, full.Snapshot, dir, "base/"+oid)

	for i := 1500; i < 1550; i++ {
		os.Remove(filepath.Join(dir, strconv.Itoa(3000000000+i)))
	}
	pgtest.WriteRelFiles(t, dir, 3100000000, 100, 2)
	c.ExecDB(t, "many", "UPDATE t SET v = 'changed' WHERE id % 10 = 0")
	want := testenv.DatabaseFingerprint(t, c)
	inc := mustBackup(t, r, opts)
	if inc.Method != MethodBlockSummaries {
		t.Fatalf("incremental by %s (%s)", inc.Method, inc.Fallback)
	}
	incParts := dbParts(t, r.Repo, inc.Snapshot, oid)
	same := 0
	old := map[blob.ID]bool{}
	for _, p := range fullParts {
		old[p.ID] = true
	}
	for _, p := range incParts {
		if old[p.ID] {
			same++
		}
	}
	t.Logf("%d parts, %d of them as in the full backup", len(incParts), same)
	if same < len(incParts)/2 {
		t.Errorf("%d of %d parts of the big directory deduplicated", same, len(incParts))
	}
	checkDirFiles(t, r.Repo, inc.Snapshot, dir, "base/"+oid)
	rc := restoreSnapshot(t, r.Repo, inc.Snapshot, a, 15, false)
	if got := testenv.DatabaseFingerprint(t, rc); got != want {
		t.Fatalf("restored fingerprint %s, want %s", got, want)
	}
}

// dbParts returns the parts of the tree of base/<oid> in snapshot s.
func dbParts(t *testing.T, r *repo.Repo, s *repo.Snapshot, oid string) []filemap.TreePart {
	t.Helper()
	tree := func(id blob.ID) *filemap.Tree {
		b, err := r.ReadBlob(t.Context(), id, nil)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := filemap.DecodeTree(b)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	id := s.Roots[0]
	for _, name := range []string{"base", oid} {
		n := tree(id).Find(name)
		if n == nil {
			t.Fatalf("snapshot %s has no %s", s.ID, name)
		}
		id = n.Subtree
	}
	return tree(id).Parts
}

// checkDirFiles compares the relation files of directory rel in snapshot
// s, materialised, with dir on disk: the same names and bytes.
func checkDirFiles(t *testing.T, r *repo.Repo, s *repo.Snapshot, dir, rel string) {
	t.Helper()
	dest := t.TempDir()
	var spc []string
	for i := range s.Tablespaces {
		spc = append(spc, filepath.Join(t.TempDir(), strconv.Itoa(i)))
	}
	materialize(t, r, s, dest, spc)
	// The synthetic files (PostgreSQL's own may change after the backup).
	synthetic := func(d string) []os.DirEntry {
		all, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		var out []os.DirEntry
		for _, e := range all {
			if name := e.Name(); len(name) == 10 && name[0] == '3' {
				out = append(out, e)
			}
		}
		return out
	}
	ents, got := synthetic(dir), synthetic(filepath.Join(dest, rel))
	if len(got) != len(ents) {
		t.Fatalf("%s: %d entries in the snapshot, %d on disk", rel, len(got), len(ents))
	}
	for i, e := range ents {
		if got[i].Name() != e.Name() {
			t.Fatalf("%s: entry %d is %s in the snapshot, %s on disk", rel, i, got[i].Name(), e.Name())
		}
		a, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b, _ := os.ReadFile(filepath.Join(dest, rel, e.Name()))
		if !bytes.Equal(a, b) {
			t.Fatalf("%s/%s differs", rel, e.Name())
		}
	}
}
