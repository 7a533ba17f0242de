package backup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// snapshotFiles lists every node of a snapshot's PGDATA tree by path.
func snapshotFiles(t *testing.T, r *repo.Repo, s *repo.Snapshot) map[string]filemap.Node {
	t.Helper()
	out := map[string]filemap.Node{}
	var walk func(id blob.ID, prefix string)
	walk = func(id blob.ID, prefix string) {
		b, err := r.ReadBlob(t.Context(), id, nil)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := filemap.DecodeTree(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range tr.Parts {
			walk(p.ID, prefix)
		}
		for _, n := range tr.Nodes {
			out[prefix+n.Name] = n
			if n.Type == filemap.TypeDir {
				walk(n.Subtree, prefix+n.Name+"/")
			}
		}
	}
	walk(s.Roots[0], "")
	return out
}

// TestBackupContents checks what a backup leaves out and keeps: unlogged
// relations' forks but _init, pg_wal's contents, replication slots,
// temporary files, pg_internal.init, postmaster.pid; kept empty: the
// directories PostgreSQL needs; backup_label and tablespace_map in the
// snapshot, not the tree.
func TestBackupContents(t *testing.T) {
	for _, v := range []int{16, 18} {
		t.Run("pg"+itoa(v), func(t *testing.T) {
			t.Parallel()
			c, a := newCluster(t, v, nil)
			c.Exec(t, `CREATE UNLOGGED TABLE ul (id int PRIMARY KEY, v text);
INSERT INTO ul SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
CREATE TABLE logged (id int);
INSERT INTO logged SELECT generate_series(1, 1000);
SELECT pg_create_physical_replication_slot('slot1', true);`)
			ul := c.QueryString(t, "SELECT pg_relation_filepath('ul')")
			ulIdx := c.QueryString(t, "SELECT pg_relation_filepath('ul_pkey')")
			logged := c.QueryString(t, "SELECT pg_relation_filepath('logged')")
			// Stray files a backup must skip.
			for _, p := range []string{"base/pgsql_tmp/pgsql_tmp123.0", "backup_label.old", "global/pg_internal.init"} {
				path := filepath.Join(c.DataDir, p)
				os.MkdirAll(filepath.Dir(path), 0o700)
				if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			r := newTestRepo(t, 1<<20)
			res := mustBackup(t, r, backupOpts(t, c, a))
			files := snapshotFiles(t, r.Repo, res.Snapshot)
			for _, p := range []string{ul, ul + "_fsm", ul + "_vm", ulIdx, "postmaster.pid", "postmaster.opts", "backup_label",
				"tablespace_map", "base/pgsql_tmp", "global/pg_internal.init"} {
				if _, ok := files[p]; ok {
					t.Errorf("%s is in the snapshot", p)
				}
			}
			for _, p := range []string{ul + "_init", ulIdx + "_init", logged, "global/pg_control", "PG_VERSION", "postgresql.conf", "backup_label.old"} {
				if n, ok := files[p]; !ok || n.Type != filemap.TypeFile {
					t.Errorf("%s is missing from the snapshot", p)
				}
			}
			if n := files[logged]; n.Map.IsZero() || len(n.Content) != 0 {
				t.Errorf("relation file %s is not a page map: %+v", logged, n)
			}
			if n := files["PG_VERSION"]; !n.Map.IsZero() || len(n.Content) != 1 || n.Size != 3 {
				t.Errorf("PG_VERSION: %+v", n)
			}
			for _, d := range pg.RequiredEmptyDirs(v) {
				n, ok := files[d]
				if !ok || n.Type != filemap.TypeDir {
					t.Errorf("directory %s is missing", d)
				}
				for p := range files {
					if strings.HasPrefix(p, d+"/") && (d != "pg_wal" || !strings.HasPrefix(p, "pg_wal/archive_status") && !strings.HasPrefix(p, "pg_wal/summaries")) {
						t.Errorf("%s is in the snapshot", p)
					}
				}
			}
			if !strings.Contains(string(res.Snapshot.BackupLabel), "START WAL LOCATION") {
				t.Errorf("backup_label: %q", res.Snapshot.BackupLabel)
			}
			for p, n := range files {
				if n.Type == filemap.TypeFile && (n.Mode == 0 || n.Inode == 0 || n.ModTime == 0) {
					t.Errorf("%s lacks metadata: %+v", p, n)
				}
			}
			// The restored cluster has the logged table; the unlogged one
			// is empty, as after a crash.
			rc := restoreSnapshot(t, r.Repo, res.Snapshot, a, v, false)
			if got := rc.QueryString(t, "SELECT count(*) FROM logged"); got != "1000" {
				t.Errorf("restored logged table has %s rows", got)
			}
			if got := rc.QueryString(t, "SELECT count(*) FROM ul"); got != "0" {
				t.Errorf("restored unlogged table has %s rows", got)
			}
		})
	}
}

// TestChecksumFailures corrupts a page of a stopped cluster's table: the
// backup reports it (file and relation block), records it in the snapshot,
// and with FailOnChecksumError commits nothing.
func TestChecksumFailures(t *testing.T) {
	c, a := newCluster(t, 17, map[string]string{"autovacuum": "off"})
	testenv.LoadRandomTable(t, c, "victim", 30000)
	rel := c.QueryString(t, "SELECT pg_relation_filepath('victim')")
	c.Stop()
	f, err := os.OpenFile(filepath.Join(c.DataDir, rel), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Damage the tuple area of blocks 5 and 130 (in the second slot).
	for _, blk := range []int64{5, 130} {
		if _, err := f.WriteAt([]byte("garbage!"), blk*8192+5000); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	c.Start()
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	opts.FailOnChecksumError = true
	_, err = Run(t.Context(), r.Repo, opts)
	var ce *ChecksumFailureError
	if !errors.As(err, &ce) || !errors.Is(err, ErrChecksum) || len(ce.Errors) != 2 {
		t.Fatalf("backup with FailOnChecksumError: %v", err)
	}
	if snaps, _ := r.Snapshots(t.Context(), 0); len(snaps) != 0 {
		t.Fatalf("%d snapshots committed", len(snaps))
	}
	opts.FailOnChecksumError = false
	res := mustBackup(t, r, opts)
	got := res.Snapshot.ChecksumErrors
	if len(got) != 2 || got[0].File != rel && got[1].File != rel {
		t.Fatalf("checksum errors %+v", got)
	}
	blocks := map[uint32]bool{got[0].Block: true, got[1].Block: true}
	if !blocks[5] || !blocks[130] || got[0].Expected == got[0].Found {
		t.Fatalf("checksum errors %+v, want blocks 5 and 130", got)
	}
	if res.Stats.ChecksumPages == 0 {
		t.Error("no page was verified")
	}
}

// TestReusedPackMissing: a blob the backup would reuse lives in a pack that
// is gone; the backup re-checks reused packs before commit and fails
// instead of committing a snapshot that cannot be restored.
func TestReusedPackMissing(t *testing.T) {
	c, a := newCluster(t, 15, nil)
	testenv.PGBenchInit(t, c, 1)
	r := newTestRepo(t, 256<<10)
	mustBackup(t, r, backupOpts(t, c, a))
	var removed int
	for oi, err := range r.store.List(t.Context(), "data/", "") {
		if err != nil {
			t.Fatal(err)
		}
		if err := r.store.Delete(t.Context(), oi.Key); err != nil {
			t.Fatal(err)
		}
		removed++
	}
	opts := backupOpts(t, c, a)
	opts.Full = true
	_, err := Run(t.Context(), r.Repo, opts)
	if err == nil || !strings.Contains(err.Error(), "reused pack") {
		t.Fatalf("backup over %d deleted packs: %v", removed, err)
	}
	if snaps, _ := r.Snapshots(t.Context(), 0); len(snaps) != 1 {
		t.Fatalf("%d snapshots", len(snaps))
	}
}

// TestSummaryMismatchFallsBack: WAL summaries that leave out a changed
// relation are caught by sampling; the backup reads page LSNs instead and
// is still right.
func TestSummaryMismatchFallsBack(t *testing.T) {
	c, a := newCluster(t, 17, map[string]string{"summarize_wal": "on", "autovacuum": "off"})
	testenv.LoadRandomTable(t, c, "t", 50000)
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	testenv.UpdateRandomRows(t, c, "t", 1)
	rel, ok := pg.ParseRelPath(c.QueryString(t, "SELECT pg_relation_filepath('t')"))
	if !ok {
		t.Fatal("relation path")
	}
	want := testenv.DatabaseFingerprint(t, c)
	opts.summaryForced = func(s *summary) {
		delete(s.rels, relKey{rel.Tablespace, rel.Database, rel.RelNumber, pg.ForkMain})
	}
	// Sampling is random, a few pages per 16 MiB: this table is smaller.
	opts.sampleAll = true
	res := mustBackup(t, r, opts)
	if res.Method != MethodLSNScan || !strings.Contains(res.Fallback, "disagreed") {
		t.Fatalf("method %s (%s), want a fallback to %s", res.Method, res.Fallback, MethodLSNScan)
	}
	rc := restoreSnapshot(t, r.Repo, res.Snapshot, a, 17, false)
	if got := testenv.DatabaseFingerprint(t, rc); got != want {
		t.Fatalf("restored fingerprint %s, want %s", got, want)
	}
}

// TestChecksumsTurnedOn: data checksums enabled between two backups
// (pg_checksums --enable on the stopped cluster). The second backup must not
// build on the first, whose pages carry no checksums (PITFALLS).
func TestChecksumsTurnedOn(t *testing.T) {
	off := false
	a := newWALArchive(t)
	c := testenv.NewCluster(t, testenv.PGConfig{Version: 15, DataChecksums: &off,
		Settings: map[string]string{"archive_mode": "on", "archive_command": a.archiveCommand()}})
	testenv.PGBenchInit(t, c, 1)
	r := newTestRepo(t, 1<<20)
	first := mustBackup(t, r, backupOpts(t, c, a))
	if first.Snapshot.DataChecksums {
		t.Fatal("the first snapshot records data checksums")
	}
	c.Stop()
	bin, ok := c.OwnClientBin("pg_checksums")
	if !ok {
		t.Skip("no pg_checksums for PostgreSQL 15")
	}
	if out, err := c.Command(t.Context(), bin, "--enable", "-D", c.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("pg_checksums --enable: %v\n%s", err, out)
	}
	c.Start()
	want := testenv.DatabaseFingerprint(t, c)
	second := mustBackup(t, r, backupOpts(t, c, a))
	if second.Snapshot.Type != repo.SnapshotFull || !second.Snapshot.DataChecksums || !strings.Contains(second.Fallback, "checksums") {
		t.Fatalf("after enabling checksums: %s backup (%s), checksums %v", second.Snapshot.Type, second.Fallback, second.Snapshot.DataChecksums)
	}
	rc := restoreSnapshot(t, r.Repo, second.Snapshot, a, 15, false)
	if got := testenv.DatabaseFingerprint(t, rc); got != want {
		t.Fatalf("restored fingerprint %s, want %s", got, want)
	}
}

// TestRebaseByAge: slots whose base is older than the rebase age and that
// have patched pages are rewritten whole; others keep their patches.
func TestRebaseByAge(t *testing.T) {
	c, a := newCluster(t, 15, map[string]string{"autovacuum": "off"})
	testenv.LoadRandomTable(t, c, "t", 100000)
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	old := time.Now().Add(-40 * 24 * time.Hour)
	opts.Now = func() time.Time { return old }
	mustBackup(t, r, opts)
	// One row per slot or so: far below the page threshold.
	c.Exec(t, "UPDATE t SET payload = 'changed' WHERE id % 12000 = 0")
	opts.Now = nil
	opts.RebaseSpread = 1 // every old slot is due today
	res := mustBackup(t, r, opts)
	if res.Stats.RebasedSlots == 0 {
		t.Fatalf("no slot with an old base was rewritten (%d pages in patches)", res.Stats.PatchedPages)
	}
	// The rewritten slots are young now: nothing is due again.
	c.Exec(t, "UPDATE t SET payload = 'again' WHERE id % 12000 = 0")
	res = mustBackup(t, r, opts)
	if res.Stats.RebasedSlots != 0 || res.Stats.PatchedPages == 0 {
		t.Fatalf("young slots: %d rewritten, %d pages in patches", res.Stats.RebasedSlots, res.Stats.PatchedPages)
	}
}

// TestRebaseByCount: a window in which more pages changed than the rebase
// threshold is rewritten whole when its pages would be stored as they are,
// and kept as deltas against its base slot otherwise, which is what makes
// an index under random inserts (nearly every leaf changes) cheap.
func TestRebaseByCount(t *testing.T) {
	c, a := newCluster(t, 15, map[string]string{"autovacuum": "off"})
	testenv.LoadRandomTable(t, c, "t", 100000)
	// Room in every page, so that the updates below rewrite every page in
	// place (HOT) instead of appending new pages, which have no base.
	c.Exec(t, "ALTER TABLE t SET (fillfactor = 50)")
	c.Exec(t, "VACUUM FULL t")
	for _, deltas := range []bool{false, true} {
		r := newTestRepo(t, 1<<20)
		opts := backupOpts(t, c, a)
		opts.NoPageDeltas = !deltas
		mustBackup(t, r, opts)
		// Every page of the table: past any threshold.
		c.Exec(t, "UPDATE t SET payload = payload || 'x'")
		want := testenv.DatabaseFingerprint(t, c)
		res := mustBackup(t, r, opts)
		switch {
		case deltas && (res.Stats.RebasedSlots != 0 || res.Stats.DeltaPages == 0):
			t.Fatalf("with deltas: %d slots rewritten, %d of %d patch pages deltas", res.Stats.RebasedSlots, res.Stats.DeltaPages, res.Stats.PatchedPages)
		case !deltas && (res.Stats.RebasedSlots == 0 || res.Stats.DeltaPages != 0 || res.Stats.BaseReadBytes != 0):
			t.Fatalf("without deltas: %d slots rewritten, %d delta pages, %d base bytes read", res.Stats.RebasedSlots, res.Stats.DeltaPages, res.Stats.BaseReadBytes)
		}
		rc := restoreSnapshot(t, r.Repo, res.Snapshot, a, 15, false)
		if got := testenv.DatabaseFingerprint(t, rc); got != want {
			t.Fatalf("deltas %v: restored fingerprint %s, want %s", deltas, got, want)
		}
		rc.Stop()
	}
}

// TestRebaseByPatchBlobs: a window whose pages end up spread over more
// than maxPatchBlobs patch blobs is rewritten whole, which bounds what a
// restore reads for it, however many backups patched it.
func TestRebaseByPatchBlobs(t *testing.T) {
	c, a := newCluster(t, 15, map[string]string{"autovacuum": "off"})
	testenv.LoadRandomTable(t, c, "t", 100000)
	c.Exec(t, "ALTER TABLE t SET (fillfactor = 50)")
	c.Exec(t, "VACUUM FULL t")
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	var rebased int64
	var last *Result
	for k := range 6 {
		// A few rows in every window (about 25 rows to a page, 128
		// pages to a window), on other pages each time (150 ids apart):
		// each backup adds a patch blob to every window and supersedes
		// none.
		c.Exec(t, fmt.Sprintf("UPDATE t SET payload = payload || 'x' WHERE id %% 1000 = %d", k*150))
		last = mustBackup(t, r, opts)
		rebased += last.Stats.RebasedSlots
	}
	if rebased == 0 {
		t.Fatal("no window was rewritten after six backups each adding a patch blob to it")
	}
	for rel, n := range snapshotFiles(t, r.Repo, last.Snapshot) {
		if n.Map.IsZero() {
			continue
		}
		_, patches := patchWindows(t, r.Repo, n.Map)
		for w, ids := range patches {
			// One backup may add two (a patch fills up mid-window).
			if len(ids) > maxPatchBlobs+1 {
				t.Errorf("%s window %d: pages in %d patch blobs", rel, w, len(ids))
			}
		}
	}
	want := testenv.DatabaseFingerprint(t, c)
	rc := restoreSnapshot(t, r.Repo, last.Snapshot, a, 15, false)
	if got := testenv.DatabaseFingerprint(t, rc); got != want {
		t.Fatalf("restored fingerprint %s, want %s", got, want)
	}
}

// patchWindows reads page map id and returns it with, for each window
// holding pages in patch blobs, the IDs of those blobs.
func patchWindows(t *testing.T, r *repo.Repo, id blob.ID) (*filemap.Map, map[uint32]map[blob.ID]bool) {
	t.Helper()
	mb, err := r.ReadBlob(t.Context(), id, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := filemap.DecodeMap(mb)
	if err != nil {
		t.Fatal(err)
	}
	patches := map[uint32]map[blob.ID]bool{}
	for _, e := range m.Extents {
		if e.Blob.IsZero() {
			continue
		}
		loc, err := r.Lookup(t.Context(), e.Blob)
		if err != nil {
			t.Fatal(err)
		}
		if !loc.Kind.IsPatch() {
			continue
		}
		for p := e.Page; p < e.Page+e.Count; p++ {
			w := p / m.SlotPages()
			if patches[w] == nil {
				patches[w] = map[blob.ID]bool{}
			}
			patches[w][e.Blob] = true
		}
	}
	return m, patches
}
