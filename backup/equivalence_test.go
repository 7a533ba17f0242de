package backup

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
)

// workload is a randomized mix of what breaks incremental backups
// (PITFALLS): updates, relations that grow and shrink, VACUUM FULL,
// TRUNCATE, DROP and CREATE DATABASE with both strategies, ALTER DATABASE
// SET TABLESPACE, new tablespaces, unlogged tables, dropped and re-created
// tables.
type workload struct {
	t    testing.TB
	c    *testenv.Cluster
	v    int // major version
	rng  *rand.Rand
	n    int      // counter for new names
	dbs  []string // databases made from the template "src"
	spcs []string // tablespaces
}

func newWorkload(t testing.TB, c *testenv.Cluster, seed uint64) *workload {
	w := &workload{t: t, c: c, v: c.Version, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	testenv.PGBenchInit(t, c, 1)
	c.Exec(t, `CREATE TABLE grow (id serial PRIMARY KEY, payload text);
INSERT INTO grow (payload) SELECT md5(g::text) FROM generate_series(1, 20000) g;
CREATE UNLOGGED TABLE ul (id int, payload text);
INSERT INTO ul SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
CREATE TABLE toasty (id int PRIMARY KEY, v text);
INSERT INTO toasty SELECT g, (SELECT string_agg(md5(random()::text || g || s), '') FROM generate_series(1, 200) s)
FROM generate_series(1, 300) g;`)
	c.Exec(t, "CREATE DATABASE src")
	c.ExecDB(t, "src", `CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;`)
	w.newTablespace()
	return w
}

func (w *workload) name(prefix string) string {
	w.n++
	return prefix + strconv.Itoa(w.n)
}

func (w *workload) newTablespace() {
	name := w.name("ts")
	dir := filepath.Join(testenv.SharedDir(w.t), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		w.t.Fatal(err)
	}
	testenv.ChownToServer(w.t, dir)
	w.c.Exec(w.t, fmt.Sprintf("CREATE TABLESPACE %s LOCATION '%s'", name, dir))
	w.c.Exec(w.t, fmt.Sprintf(`CREATE TABLE %[1]s_t (id int, v text) TABLESPACE %[1]s;
INSERT INTO %[1]s_t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;`, name))
	w.spcs = append(w.spcs, name)
}

// step runs a few random operations.
func (w *workload) step() {
	ops := []struct {
		name string
		f    func()
	}{
		{"update accounts", func() {
			w.c.Exec(w.t, fmt.Sprintf("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid %% %d = %d", 20+w.rng.IntN(80), w.rng.IntN(20)))
		}},
		{"grow", func() {
			w.c.Exec(w.t, fmt.Sprintf("INSERT INTO grow (payload) SELECT md5(random()::text) FROM generate_series(1, %d)", 1000+w.rng.IntN(20000)))
		}},
		{"shrink", func() {
			w.c.Exec(w.t, fmt.Sprintf("DELETE FROM grow WHERE id > (SELECT max(id) - %d FROM grow)", 1000+w.rng.IntN(15000)))
			w.c.Exec(w.t, "VACUUM grow")
		}},
		{"vacuum full", func() {
			w.c.Exec(w.t, "VACUUM FULL "+[]string{"grow", "pgbench_accounts", "pgbench_history"}[w.rng.IntN(3)])
		}},
		{"cluster", func() { w.c.Exec(w.t, "CLUSTER grow USING grow_pkey") }},
		{"shrink and regrow", func() {
			// VACUUM cuts the heap (and its visibility map) and inserts
			// regrow it: with checksums and wal_log_hints off the
			// visibility map's last page changes without WAL.
			w.c.Exec(w.t, fmt.Sprintf("DELETE FROM grow WHERE id > (SELECT max(id) - %d FROM grow)", 2000+w.rng.IntN(10000)))
			w.c.Exec(w.t, "VACUUM grow")
			w.c.Exec(w.t, fmt.Sprintf("INSERT INTO grow (payload) SELECT md5(random()::text) FROM generate_series(1, %d)", 1000+w.rng.IntN(5000)))
			w.c.Exec(w.t, "VACUUM grow")
		}},
		{"truncate and regrow by COPY", func() {
			w.c.Exec(w.t, fmt.Sprintf("DELETE FROM grow WHERE id > (SELECT max(id) - %d FROM grow)", 5000+w.rng.IntN(10000)))
			w.c.Exec(w.t, "VACUUM grow")
			w.c.Exec(w.t, fmt.Sprintf("COPY grow (payload) FROM PROGRAM 'seq 1 %d'", 20000+w.rng.IntN(20000)))
		}},
		{"truncate", func() {
			w.c.Exec(w.t, "TRUNCATE pgbench_history; INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() FROM generate_series(1, 500) g")
		}},
		{"create database", func() {
			// Both strategies from 15 on; before, file copy only.
			strategy := []string{" STRATEGY WAL_LOG", " STRATEGY FILE_COPY"}[w.rng.IntN(2)]
			if w.v < 15 {
				strategy = ""
			}
			db := w.name("db")
			w.c.Exec(w.t, fmt.Sprintf("CREATE DATABASE %s TEMPLATE src%s", db, strategy))
			w.c.ExecDB(w.t, db, "UPDATE t SET v = md5(v) WHERE id % 7 = 0")
			w.dbs = append(w.dbs, db)
		}},
		{"drop database", func() {
			if len(w.dbs) == 0 {
				return
			}
			i := w.rng.IntN(len(w.dbs))
			w.c.Exec(w.t, "DROP DATABASE "+w.dbs[i])
			w.dbs = slices.Delete(w.dbs, i, i+1)
		}},
		{"move database", func() {
			if len(w.dbs) == 0 {
				return
			}
			spc := append([]string{"pg_default"}, w.spcs...)[w.rng.IntN(len(w.spcs)+1)]
			w.c.Exec(w.t, fmt.Sprintf("ALTER DATABASE %s SET TABLESPACE %s", w.dbs[w.rng.IntN(len(w.dbs))], spc))
		}},
		{"change template", func() { w.c.ExecDB(w.t, "src", "UPDATE t SET v = md5(random()::text) WHERE id % 5 = 0") }},
		{"new tablespace", w.newTablespace},
		{"toast", func() {
			w.c.Exec(w.t, fmt.Sprintf(`UPDATE toasty SET v = (SELECT string_agg(md5(random()::text || id || s), '')
FROM generate_series(1, 200) s) WHERE id %% %d = 0`, 2+w.rng.IntN(5)))
		}},
		{"unlogged", func() {
			w.c.Exec(w.t, "INSERT INTO ul SELECT g, md5(random()::text) FROM generate_series(1, 3000) g")
		}},
		{"drop and create", func() {
			w.c.Exec(w.t, "DROP TABLE IF EXISTS churn; CREATE TABLE churn AS SELECT g AS id, md5(random()::text) AS v FROM generate_series(1, 4000) g")
		}},
		{"set tablespace", func() {
			w.c.Exec(w.t, fmt.Sprintf("ALTER TABLE grow SET TABLESPACE %s", append([]string{"pg_default"}, w.spcs...)[w.rng.IntN(len(w.spcs)+1)]))
		}},
	}
	for range 3 + w.rng.IntN(4) {
		op := ops[w.rng.IntN(len(ops))]
		w.t.Logf("workload: %s", op.name)
		op.f()
	}
	w.c.Exec(w.t, "CHECKPOINT")
}

func testSeed(t testing.TB) uint64 {
	if s := os.Getenv("TIDEMARK_TEST_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	seed := rand.Uint64()
	t.Logf("seed %d (TIDEMARK_TEST_SEED reproduces it)", seed)
	return seed
}

// TestIncrementalEquivalence runs on every supported version, with block
// summaries as the change source (and on 17 PostgreSQL's WAL summaries
// beside them): a chain of incrementals with a random workload between
// them, each restored and compared with the source at that backup's end;
// an incremental whose range lost a summary (deleted on odd versions,
// corrupted on even ones), which must fall back to page LSNs and still be
// right; a promotion between a parent and its child (the branch restored
// from the chain, promoted at a point after it, written to and backed up);
// and last an incremental and a full backup taken back to back, compared
// page by page. Even versions run with data checksums and wal_log_hints
// off, where the visibility map changes without WAL.
//
// 15 and 17 run all of it. 13, 14, 16 and 18, where what differs is the
// WAL format the summaries are read from, run one incremental of the
// random workload, the lost summary and the last comparison: the same
// records, at a third of the time (CI stays well under its budget).
func TestIncrementalEquivalence(t *testing.T) {
	cases := []struct {
		version  int
		settings map[string]string
		all      bool // the whole sequence, not the shorter one
	}{
		{13, nil, false},
		{14, map[string]string{"wal_log_hints": "off"}, false},
		{15, nil, true},
		{16, map[string]string{"wal_log_hints": "off"}, false},
		{17, map[string]string{"summarize_wal": "on"}, true},
		{18, map[string]string{"wal_log_hints": "off"}, false},
	}
	for _, tc := range cases {
		t.Run("pg"+strconv.Itoa(tc.version), func(t *testing.T) {
			t.Parallel()
			settings := map[string]string{"autovacuum": "off"}
			for k, v := range tc.settings {
				settings[k] = v
			}
			c, a := newClusterChecksums(t, tc.version, settings, tc.version%2 == 1)
			w := newWorkload(t, c, testSeed(t))
			r := newTestRepo(t, 1<<20)
			opts := backupOpts(t, c, a)
			last := mustBackup(t, r, opts)
			var deltas int64
			check := func(what string, res *Result, want string, c *testenv.Cluster) {
				t.Helper()
				rc := restoreSnapshot(t, r.Repo, res.Snapshot, a, tc.version, false)
				if got := testenv.DatabaseFingerprint(t, rc); got != want {
					t.Fatalf("%s restored with fingerprint %s, want %s\nrestored: %v\nsource: %v",
						what, got, want, testenv.TableChecksums(t, rc), testenv.TableChecksums(t, c))
				}
				checkIndexes(t, rc)
				rc.Stop()
			}
			summaries := func(res *Result) bool { return res.Method == MethodBlockSummaries || res.Method == MethodSummaries }
			incrementals := 1
			if tc.all {
				incrementals = 2
			}
			for i := range incrementals {
				w.step()
				want := testenv.DatabaseFingerprint(t, c)
				res := mustBackup(t, r, opts)
				if !summaries(res) {
					t.Fatalf("incremental %d used %s (%s), want summaries", i, res.Method, res.Fallback)
				}
				deltas += res.Stats.DeltaPages
				check(fmt.Sprintf("incremental %d", i), res, want, c)
				last = res
			}

			// A summary lost in the bucket: the run is broken, the
			// incremental falls back to page LSNs and says why.
			w.step()
			waitArchived(t, c)
			c.Exec(t, "CHECKPOINT") // pg_wal's copies of the archived segments go
			fault := "deleted"
			if tc.version%2 == 0 {
				fault = "corrupted"
			}
			name := a.damageSummary(t, pg.LSN(last.Snapshot.StopLSN), fault)
			want := testenv.DatabaseFingerprint(t, c)
			noPGSummaries := opts
			noPGSummaries.noPGSummaries = true
			res := mustBackup(t, r, noPGSummaries)
			if res.Method != MethodLSNScan || !strings.Contains(res.Fallback, name) {
				t.Fatalf("with the summary of %s %s: method %s (%s), want %s naming it", name, fault, res.Method, res.Fallback, MethodLSNScan)
			}
			check("incremental over a "+fault+" summary", res, want, c)
			last = res

			// A promotion between parent and child.
			bopts := opts
			if tc.all {
				c.Exec(t, "CREATE TABLE branch_marks (v text); INSERT INTO branch_marks VALUES ('before')")
				target := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
				c.Exec(t, "INSERT INTO branch_marks VALUES ('after'); UPDATE grow SET payload = 'timeline 1 only' WHERE id % 3 = 0")
				waitArchived(t, c)
				bset := map[string]string{"recovery_target_lsn": target, "recovery_target_action": "promote",
					"archive_mode": "on", "archive_command": a.archiveCommand()}
				for k, v := range settings {
					bset[k] = v
				}
				b := restoreWith(t, r.Repo, last.Snapshot, a, tc.version, bset)
				if got := b.QueryString(t, "SELECT string_agg(v, ',') FROM branch_marks"); got != "before" {
					t.Fatalf("the branch has %q", got)
				}
				w.c = b
				w.step()
				want := testenv.DatabaseFingerprint(t, b)
				bopts = backupOpts(t, b, a)
				child := mustBackup(t, r, bopts)
				if child.Snapshot.Parent != last.Snapshot.ID || child.Snapshot.StopTimeline != 2 || !summaries(child) {
					t.Fatalf("backup of the branch: parent %s on timeline %d by %s (%s), want %s on 2 by summaries",
						child.Snapshot.Parent, child.Snapshot.StopTimeline, child.Method, child.Fallback, last.Snapshot.ID)
				}
				check("the branch's incremental", child, want, b)
			}

			w.step()
			inc := mustBackup(t, r, bopts)
			full := bopts
			full.Full = true
			fres := mustBackup(t, r, full)
			comparePages(t, r.Repo, inc.Snapshot, fres.Snapshot, !summaries(inc))
			// The longer sequence is sure to have changed pages in
			// stored slots; the shorter one may not.
			if deltas += inc.Stats.DeltaPages + res.Stats.DeltaPages; deltas == 0 && tc.all {
				t.Fatal("no incremental stored a page as a delta against its base slot")
			}
		})
	}
}

// comparePages materialises two snapshots taken back to back and checks
// that every relation page older than the first one's start is identical.
// wholeSums: a read every page (no summaries), so every window holding
// patch pages has a sum.
func comparePages(t *testing.T, r *repo.Repo, a, b *repo.Snapshot, wholeSums bool) {
	t.Helper()
	dirs := func(s *repo.Snapshot) (string, []string) {
		base := t.TempDir()
		var spc []string
		for i := range s.Tablespaces {
			spc = append(spc, filepath.Join(base, "ts"+strconv.Itoa(i)))
		}
		return filepath.Join(base, "data"), spc
	}
	da, sa := dirs(a)
	db, sb := dirs(b)
	materialize(t, r, a, da, sa)
	materialize(t, r, b, db, sb)
	checkSums(t, r, a, da, db, wholeSums)
	roots := func(d string, spc []string, s *repo.Snapshot) map[string]string {
		m := map[string]string{"": d}
		for i, ts := range s.Tablespaces {
			m[fmt.Sprintf("pg_tblspc/%d/", ts.OID)] = spc[i]
		}
		return m
	}
	ra, rb := roots(da, sa, a), roots(db, sb, b)
	pages, files := 0, 0
	for prefix, rootA := range ra {
		rootB, ok := rb[prefix]
		if !ok {
			t.Fatalf("tablespace %s is only in snapshot %s", prefix, a.ID)
		}
		err := filepath.WalkDir(rootA, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(rootA, p)
			if _, ok := pg.ParseRelPath(prefix + filepath.ToSlash(rel)); !ok {
				return nil
			}
			files++
			x, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			y, err := os.ReadFile(filepath.Join(rootB, rel))
			if err != nil {
				return fmt.Errorf("relation file %s%s is only in the incremental: %w", prefix, rel, err)
			}
			bs := a.BlockSize
			if len(x) != len(y) {
				return fmt.Errorf("%s%s: %d bytes in the incremental, %d in the full backup", prefix, rel, len(x), len(y))
			}
			for off := 0; off+bs <= len(x); off += bs {
				pa, pb := x[off:off+bs], y[off:off+bs]
				if bytes.Equal(pa, pb) || pg.PageLSN(pb) >= pg.LSN(a.StartLSN) {
					continue
				}
				if !a.DataChecksums && pg.PageLSN(pa) == pg.PageLSN(pb) && hintsOnly(pa, pb) {
					// Without checksums or wal_log_hints, hint bits are
					// set with no WAL and no LSN: nothing can tell, and
					// the older copy is as good (PITFALLS).
					continue
				}
				return fmt.Errorf("%s%s page %d differs: incremental LSN %s, full LSN %s", prefix, rel, off/bs, pg.PageLSN(pa), pg.PageLSN(pb))
			}
			pages += len(x) / bs
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("compared %d pages of %d relation files", pages, files)
}

// hintsOnly reports whether two copies of a page differ only in the bits
// PostgreSQL sets as hints, without WAL: a heap tuple's committed/invalid
// bits (t_infomask 0x0F00), an index item marked dead (LP_DEAD), a B-tree
// page's BTP_HAS_GARBAGE, a page's PD_PAGE_FULL.
func hintsOnly(a, b []byte) bool {
	x, y := bytes.Clone(a), bytes.Clone(b)
	le := binary.LittleEndian
	for _, p := range [][]byte{x, y} {
		lower, special := int(le.Uint16(p[12:])), int(le.Uint16(p[16:]))
		if lower > len(p) || special > len(p) || lower < 24 {
			return false
		}
		heap := special == len(p)
		le.PutUint16(p[10:], le.Uint16(p[10:])&^0x0002)
		if len(p)-special == 16 { // B-tree special space: btpo_flags at 12
			le.PutUint16(p[special+12:], le.Uint16(p[special+12:])&^0x10)
		}
		for lp := 24; lp+4 <= lower; lp += 4 {
			v := le.Uint32(p[lp:])
			off, flags := int(v&0x7FFF), v>>15&3
			if flags == 3 { // LP_DEAD as a hint: LP_NORMAL with its tuple
				v = v&^(3<<15) | 1<<15
				le.PutUint32(p[lp:], v)
				flags = 1
			}
			if heap && flags == 1 && off+24 <= len(p) {
				le.PutUint16(p[off+20:], le.Uint16(p[off+20:])&^0x0F00)
			}
		}
	}
	return bytes.Equal(x, y)
}

// checkSums checks the window sums of incremental a's relation files in
// PGDATA: every window holding patch pages has one (when wholeSums: a
// backup that reads only changed pages sums only windows it read whole),
// and each sum is the ID of the window's bytes as the backup read them,
// which is what a restore of a writes (materialised in da) or, for a page
// whose hint bits changed after its base was stored, what the full backup
// taken right after it read (materialised in db). A window whose hint bits
// moved between the two reads cannot be checked (hintsMoved).
func checkSums(t *testing.T, r *repo.Repo, a *repo.Snapshot, da, db string, wholeSums bool) {
	t.Helper()
	var windows, restored, unverified int
	for rel, n := range snapshotFiles(t, r, a) {
		if n.Map.IsZero() {
			continue
		}
		m, patched := patchWindows(t, r, n.Map)
		sp := m.SlotPages()
		for w := range patched {
			if _, ok := m.Sum(w); !ok && wholeSums {
				t.Errorf("%s: window %d holds patch pages but has no sum", rel, w)
			}
		}
		bs := int64(m.BlockSize)
		fa, _ := os.ReadFile(filepath.Join(da, rel))
		fb, _ := os.ReadFile(filepath.Join(db, rel))
		for _, s := range m.Sums {
			off, end := int64(s.Slot*sp)*bs, int64(min((s.Slot+1)*sp, m.Pages))*bs
			windows++
			if int64(len(fa)) >= end && r.BlobID(blob.KindSlot, fa[off:end]) == s.ID {
				restored++
				continue
			}
			if int64(len(fb)) < end || int64(len(fa)) < end {
				t.Errorf("%s: window %d has a sum but the restored files are short", rel, s.Slot)
				continue
			}
			switch {
			case r.BlobID(blob.KindSlot, fb[off:end]) == s.ID:
			case hintsMoved(fa[off:end], fb[off:end], int(bs)):
				unverified++
			default:
				t.Errorf("%s: the sum of window %d matches neither the restored incremental nor the full backup", rel, s.Slot)
			}
		}
	}
	t.Logf("window sums: %d, of which %d match the restored incremental; %d not checked (hint bits flushed while the backups ran)", windows, restored, unverified)
}

// hintsMoved reports whether windows a (restored incremental) and b (the
// later full backup) differ, and only in hint bits. The incremental read
// the window from disk between the two, and a checkpoint may flush a
// buffer whose only change is hint bits at any moment (each backup starts
// with one; every new connection sets hint bits on pg_attribute's recent
// tuples), so what it read can be a third state of those bits, which no
// copy in the test holds. Where a and b are identical the disk held that
// content throughout (hint bits are only ever set), so the sum must match.
func hintsMoved(a, b []byte, bs int) bool {
	moved := false
	for off := 0; off < len(a); off += bs {
		if bytes.Equal(a[off:off+bs], b[off:off+bs]) {
			continue
		}
		if !hintsOnly(a[off:off+bs], b[off:off+bs]) {
			return false
		}
		moved = true
	}
	return moved
}

// checkIndexes runs amcheck's bt_index_check with heapallindexed on every
// permanent B-tree index of every database of c: an index page lost or
// stale in a restored incremental (PITFALLS: zeroed index pages) makes it
// fail, although the tables' contents, read by sequential scans, match.
func checkIndexes(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	ctx := t.Context()
	conn, err := c.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn")
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, db := range dbs {
		conn, err := c.ConnDB(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS amcheck"); err != nil {
			t.Fatalf("amcheck in %s: %v", db, err)
		}
		rows, _ := conn.Query(ctx, `SELECT c.oid::regclass::text FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
WHERE am.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid AND i.indisready`)
		idx, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range idx {
			if _, err := conn.Exec(ctx, "SELECT bt_index_check($1::regclass, true)", name); err != nil {
				t.Fatalf("index %s of database %s: %v", name, db, err)
			}
			n++
		}
		conn.Close(context.Background())
	}
	t.Logf("amcheck: %d B-tree indexes verified", n)
}

// TestLSNScanAllVisible: VACUUM marks heap pages all-visible after a
// backup, on a cluster without data checksums and wal_log_hints, where the
// flag changes no LSN. An incremental by page LSNs must still capture
// those pages (their visibility map page is newer than the parent): a
// restore of it equals a full backup taken at the same point, page for
// page, PD_ALL_VISIBLE included.
func TestLSNScanAllVisible(t *testing.T) {
	c, a := newClusterChecksums(t, 16, map[string]string{"autovacuum": "off", "wal_log_hints": "off"}, false)
	c.Exec(t, "CREATE TABLE vis (id int, pad text); INSERT INTO vis SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
	c.Exec(t, "CHECKPOINT")
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	c.Exec(t, "VACUUM vis")
	c.Exec(t, "CHECKPOINT")
	lsnScan := opts
	lsnScan.NoWALSummary = true
	inc := mustBackup(t, r, lsnScan)
	if inc.Method != MethodLSNScan {
		t.Fatalf("incremental by %s, want %s", inc.Method, MethodLSNScan)
	}
	full := opts
	full.Full = true
	comparePages(t, r.Repo, inc.Snapshot, mustBackup(t, r, full).Snapshot, true)
}
