package backup

import (
	"strconv"
	"testing"
)

// TestIncrementalReadsScaleWithChanges: an incremental from block
// summaries after a few rows of a large table changed reads about the
// changed pages, not the table: from the data directory the changed pages,
// the samples and the small non-relation files; from the repository base
// slots of at most the changed pages' bytes (issue 19: total I/O scales
// with what changed, not with the size of the files it sits in).
func TestIncrementalReadsScaleWithChanges(t *testing.T) {
	c, a := newCluster(t, 15, map[string]string{"autovacuum": "off"})
	c.Exec(t, `CREATE TABLE big (id int PRIMARY KEY, v text);
INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 600000) g`)
	c.Exec(t, "VACUUM FREEZE big") // hint bits and the visibility map set now, not by the UPDATE's reads
	c.Exec(t, "CHECKPOINT")
	size, err := strconv.ParseInt(c.QueryString(t, "SELECT pg_total_relation_size('big')"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	// 30 rows through the primary key: a few dozen heap, index and
	// visibility map pages.
	c.Exec(t, "UPDATE big SET v = 'changed' WHERE id IN (SELECT g * 20000 + 7 FROM generate_series(0, 29) g); CHECKPOINT")
	res := mustBackup(t, r, opts)
	if res.Method != MethodBlockSummaries {
		t.Fatalf("incremental by %s (%s), want %s", res.Method, res.Fallback, MethodBlockSummaries)
	}
	st := res.Stats
	changed := st.PatchedPages * 8192
	t.Logf("table %d MiB; %d pages changed; read %d KiB of PGDATA, %d KiB from the repository (%d KiB of bases), %d GETs",
		size>>20, st.PatchedPages, st.ReadBytes>>10, st.RepoReadBytes>>10, st.BaseReadBytes>>10, st.RepoGets)
	if st.PatchedPages == 0 || st.PatchedPages > 200 {
		t.Fatalf("%d pages stored as patches, want the few the UPDATE touched", st.PatchedPages)
	}
	if st.BaseReadBytes > changed {
		t.Errorf("read %d bytes of base slots for %d bytes of changed pages", st.BaseReadBytes, changed)
	}
	// The small files (pg_xact, pg_multixact, the catalogs' maps...)
	// are read whole: a few MiB at most, against a table of ~70 MiB.
	if limit := size / 8; st.ReadBytes > limit {
		t.Errorf("read %d bytes of the data directory, want under %d (an eighth of the table)", st.ReadBytes, limit)
	}
	if limit := size / 8; st.RepoReadBytes > limit {
		t.Errorf("read %d bytes from the repository, want under %d (an eighth of the table)", st.RepoReadBytes, limit)
	}
}

// TestIncrementalBasesShareGets: when most windows of a table changed, the
// base slots an incremental stores deltas against come a run per GET
// (repo.ReadBlobRun), not one GET a window: a ranged GET cost MinIO about
// 4 ms of CPU, more than the backup's own work on a base.
func TestIncrementalBasesShareGets(t *testing.T) {
	c, a := newCluster(t, 17, map[string]string{"autovacuum": "off", "summarize_wal": "on"})
	c.Exec(t, `CREATE TABLE dense (id int, v text);
INSERT INTO dense SELECT g, repeat('a', 90) FROM generate_series(1, 1200000) g`)
	c.Exec(t, "VACUUM FREEZE dense")
	c.Exec(t, "CHECKPOINT")
	size, err := strconv.ParseInt(c.QueryString(t, "SELECT pg_relation_size('dense')"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	// One row in 40: every page of the table, none rewritten whole.
	c.Exec(t, "UPDATE dense SET id = -id WHERE id % 40 = 0; CHECKPOINT")
	res := mustBackup(t, r, opts)
	if res.Method != MethodBlockSummaries {
		t.Fatalf("incremental by %s (%s), want %s", res.Method, res.Fallback, MethodBlockSummaries)
	}
	st := res.Stats
	windows := size >> 20
	t.Logf("table %d MiB; %d pages as deltas, %d slots rewritten; %d KiB of bases read, %d GETs in all",
		size>>20, st.DeltaPages, st.RebasedSlots, st.BaseReadBytes>>10, st.RepoGets)
	if st.DeltaPages < windows*64 {
		t.Fatalf("%d pages stored as deltas in %d windows: the test wants most windows' pages as deltas", st.DeltaPages, windows)
	}
	// One GET a window (and the maps, index and snapshot besides) was
	// 167 GETs for this table's 144 windows; runs make 58 to 75, as the
	// two workers' slots happen to alternate in the packs.
	if st.RepoGets*3 > windows*2 {
		t.Errorf("%d GETs for the bases of about %d windows: not shared", st.RepoGets, windows)
	}
}
