package backup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// TestWindowSumsFromBase: an incremental from block summaries that reads
// only the changed pages of a window still sums it when it holds the rest
// (the fetched base slot's own pages), and when the pages earlier
// incrementals stored in patches fit within its read budget (reading them
// too stays within sixteen times the changed pages); past that budget the
// window gets no sum. Every sum must be the ID of exactly the bytes a restore of
// the snapshot writes into the window: a wrong one would make a delta
// restore keep a window that differs (the table is frozen and only
// updated by TID, so no hint bit moves between the backup's reads and the
// restore).
func TestWindowSumsFromBase(t *testing.T) {
	c, a := newCluster(t, 15, map[string]string{"autovacuum": "off"})
	// About 17 rows a page: 3 windows of 128 pages.
	c.Exec(t, `CREATE TABLE sparse (id int, v text) WITH (fillfactor = 50);
INSERT INTO sparse SELECT g, repeat('x', 200) FROM generate_series(1, 7000) g`)
	c.Exec(t, "VACUUM FREEZE sparse")
	c.Exec(t, "CHECKPOINT")
	rel := c.QueryString(t, "SELECT pg_relation_filepath('sparse')")
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	// Each incremental updates the first row of pages of window 0, 5
	// pages apart (each read alone). The first updates 24 pages, enough
	// for the base slot to be worth fetching, leaving the rest of the
	// window on the base: summed from it. The second 24 more, with the
	// first's 24 patched pages to read (48 pages read for 24 changed,
	// within the budget): summed. The third 2, too few for the base to be
	// worth fetching (stored as plain pages), so that summing would read
	// the whole window, 64 times its changed pages: no sum.
	for i, tc := range []struct {
		first, end  int
		deltas, sum bool
	}{{0, 120, true, true}, {2, 120, true, true}, {3, 13, false, false}} {
		var tids []string
		for p := tc.first; p < tc.end; p += 5 {
			tids = append(tids, fmt.Sprintf(`"(%d,1)"`, p))
		}
		c.Exec(t, "UPDATE sparse SET v = repeat('y', 200) WHERE ctid = ANY('{"+strings.Join(tids, ",")+"}'::tid[])")
		c.Exec(t, "CHECKPOINT")
		res := mustBackup(t, r, opts)
		if res.Method != MethodBlockSummaries {
			t.Fatalf("incremental %d by %s (%s), want %s", i+1, res.Method, res.Fallback, MethodBlockSummaries)
		}
		n, ok := snapshotFiles(t, r.Repo, res.Snapshot)[rel]
		if !ok || n.Map.IsZero() {
			t.Fatalf("incremental %d has no page map for %s", i+1, rel)
		}
		m, patched := patchWindows(t, r.Repo, n.Map)
		_, summed := m.Sum(0)
		t.Logf("incremental %d: %d delta pages, %d windows summed, %d without a sum; window 0: %d patch blobs, sum %v",
			i+1, res.Stats.DeltaPages, res.Stats.SummedWindows, res.Stats.UnsummedWindows, len(patched[0]), summed)
		if (res.Stats.DeltaPages >= int64(len(tids))) != tc.deltas || len(patched[0]) != i+1 {
			t.Fatalf("incremental %d: %d delta pages, window 0 in %d patch blobs; want its %d pages as deltas %v in the %d", i+1, res.Stats.DeltaPages, len(patched[0]), len(tids), tc.deltas, i+1)
		}
		if summed != tc.sum {
			t.Errorf("incremental %d: window 0 summed %v, want %v", i+1, summed, tc.sum)
		}
		checkSumsExact(t, r, res, rel, m)
	}
}

// checkSumsExact materialises snapshot res and checks that every window
// sum of relation file rel (map m) is the ID of the window as restored.
func checkSumsExact(t *testing.T, r *testRepo, res *Result, rel string, m *filemap.Map) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	materialize(t, r.Repo, res.Snapshot, dir, nil)
	data, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	bs := int64(m.BlockSize)
	sp := m.SlotPages()
	for _, s := range m.Sums {
		off, end := int64(s.Slot*sp)*bs, int64(min((s.Slot+1)*sp, m.Pages))*bs
		if int64(len(data)) < end || r.BlobID(blob.KindSlot, data[off:end]) != s.ID {
			t.Errorf("%s: the sum of window %d is not the ID of the window as restored", rel, s.Slot)
		}
	}
}
