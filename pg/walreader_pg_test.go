package pg_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
)

// realWAL is what a workload on a real server wrote, decoded by WALReader.
type realWAL struct {
	c          *testenv.Cluster
	from, to   pg.LSN // the records decoded start in [from, to)
	records    int
	blocks     map[string][]string // per record LSN: its block references, "id rel fork blk"
	effects    []pg.WALEffect
	relfile    uint32 // relfilenode of table t
	dbCopy     uint32 // OID of the database made by file copy (0 if none)
	dbWALLog   uint32
	tablespace uint32
}

// runRealWorkload runs, between two checkpoints, what a block summary must
// see: updates, a VACUUM that truncates, CREATE DATABASE with both
// strategies, DROP DATABASE, a tablespace created and dropped, a table
// dropped; then it switches WAL and decodes every record in between from
// pg_wal.
func runRealWorkload(t *testing.T, v int, settings map[string]string) *realWAL {
	c := testenv.NewCluster(t, testenv.PGConfig{Version: v, Settings: settings})
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off)")
	c.Exec(t, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
	c.Exec(t, "CREATE DATABASE src")
	c.Exec(t, "CHECKPOINT")
	w := &realWAL{c: c, blocks: map[string][]string{}}
	w.from = lsnOf(t, c, "SELECT redo_lsn::text FROM pg_control_checkpoint()")
	w.relfile = uint32(intOf(t, c, "SELECT pg_relation_filenode('t')"))

	c.Exec(t, "DELETE FROM t WHERE id > 10000")
	c.Exec(t, "VACUUM t")
	c.Exec(t, "UPDATE t SET v = md5(v) WHERE id % 50 = 0")
	if v >= 15 {
		c.Exec(t, "CREATE DATABASE dcopy TEMPLATE src STRATEGY FILE_COPY")
		c.Exec(t, "CREATE DATABASE dwal TEMPLATE src STRATEGY WAL_LOG")
		w.dbWALLog = uint32(intOf(t, c, "SELECT oid FROM pg_database WHERE datname = 'dwal'"))
	} else {
		c.Exec(t, "CREATE DATABASE dcopy TEMPLATE src")
	}
	w.dbCopy = uint32(intOf(t, c, "SELECT oid FROM pg_database WHERE datname = 'dcopy'"))
	c.Exec(t, "DROP DATABASE dcopy")
	dir := filepath.Join(testenv.SharedDir(t), "ts")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, dir)
	c.Exec(t, fmt.Sprintf("CREATE TABLESPACE ts LOCATION '%s'", dir))
	w.tablespace = uint32(intOf(t, c, "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'"))
	c.Exec(t, "CREATE TABLE x (id int) TABLESPACE ts; INSERT INTO x SELECT generate_series(1, 1000)")
	c.Exec(t, "DROP TABLE x")
	c.Exec(t, "DROP TABLESPACE ts")
	c.Exec(t, "CHECKPOINT")
	w.to = lsnOf(t, c, "SELECT redo_lsn::text FROM pg_control_checkpoint()")
	c.Exec(t, "SELECT pg_switch_wal()")

	segSize := uint32(intOf(t, c, "SELECT bytes_per_wal_segment FROM pg_control_init()"))
	tli := pg.TimelineID(intOf(t, c, "SELECT timeline_id FROM pg_control_checkpoint()"))
	first := w.from.Segment(segSize)
	r, err := pg.NewWALReader(first.Start(segSize), segSize, pg.DefaultWALBlockSize)
	if err != nil {
		t.Fatal(err)
	}
	r.OnRecord = func(rec *pg.WALRecord) error {
		if rec.LSN < w.from || rec.LSN >= w.to {
			return nil
		}
		w.records++
		var refs []string
		for _, b := range rec.Blocks {
			refs = append(refs, fmt.Sprintf("%d %s %s %d", b.ID, b.Rel, b.Fork, b.Block))
		}
		w.blocks[rec.LSN.String()] = refs
		pg.WALRecordEffects(rec, r.Major(), func(e pg.WALEffect) { w.effects = append(w.effects, e) })
		return nil
	}
	for seg := first; seg <= w.to.Segment(segSize); seg++ {
		b, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", pg.SegmentName(tli, seg, segSize)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Write(b); err != nil {
			t.Fatal(err)
		}
		if ended, at, why := r.Ended(); ended && at < w.to {
			t.Fatalf("PostgreSQL %d: the reader stopped at %s, before %s: %s", v, at, w.to, why)
		}
	}
	if r.Major() != v {
		t.Fatalf("WAL magic says PostgreSQL %d, the server is %d", r.Major(), v)
	}
	return w
}

func lsnOf(t *testing.T, c *testenv.Cluster, sql string) pg.LSN {
	l, err := pg.ParseLSN(c.QueryString(t, sql))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func intOf(t *testing.T, c *testenv.Cluster, sql string) int64 {
	n, err := strconv.ParseInt(c.QueryString(t, sql), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// has reports whether an effect of the kind matches.
func (w *realWAL) has(k pg.WALEffectKind, match func(pg.WALEffect) bool) bool {
	return slices.ContainsFunc(w.effects, func(e pg.WALEffect) bool { return e.Kind == k && match(e) })
}

// TestWALReaderRealServers decodes WAL written by every supported version
// and finds in it what the workload did; on 15 every record and block
// reference is compared with pg_waldump's, on 17 and 18 the blocks and
// truncations with the server's own WAL summaries.
func TestWALReaderRealServers(t *testing.T) {
	for _, v := range []int{13, 14, 15, 16, 17, 18} {
		t.Run("pg"+strconv.Itoa(v), func(t *testing.T) {
			t.Parallel()
			// Compressed full-page images on both sides of 15's change of
			// their flags.
			settings := map[string]string{"wal_keep_size": "1GB", "wal_compression": map[bool]string{true: "on", false: "off"}[v == 14 || v == 15 || v == 17]}
			if v >= 17 {
				settings["summarize_wal"] = "on"
			}
			w := runRealWorkload(t, v, settings)
			if w.records < 100 {
				t.Fatalf("only %d records decoded", w.records)
			}
			checks := []struct {
				what string
				ok   bool
			}{
				{"a block of t", w.has(pg.EffectBlock, func(e pg.WALEffect) bool { return e.Rel.Rel == w.relfile && e.Fork == pg.ForkMain })},
				{"t truncated by VACUUM", w.has(pg.EffectTruncate, func(e pg.WALEffect) bool {
					return e.Rel.Rel == w.relfile && e.Fork == pg.ForkMain && e.Block > 0
				})},
				{"the file-copied database", w.has(pg.EffectDatabase, func(e pg.WALEffect) bool { return e.Rel.DB == w.dbCopy && e.Rel.Spc == 1663 })},
				{"the WAL_LOG database", w.dbWALLog == 0 || w.has(pg.EffectDatabase, func(e pg.WALEffect) bool { return e.Rel.DB == w.dbWALLog })},
				{"the tablespace", w.has(pg.EffectTablespace, func(e pg.WALEffect) bool { return e.Rel.Spc == w.tablespace })},
				{"a relation created in the tablespace", w.has(pg.EffectTruncate, func(e pg.WALEffect) bool { return e.Rel.Spc == w.tablespace && e.Block == 0 })},
				{"no unknown effect", !w.has(pg.EffectUnknown, func(pg.WALEffect) bool { return true })},
			}
			for _, c := range checks {
				if !c.ok {
					t.Errorf("PostgreSQL %d: %s not found among %d effects", v, c.what, len(w.effects))
				}
			}
			switch v {
			case 15:
				compareWaldump(t, w)
			case 17, 18:
				compareSummaries(t, w)
			}
		})
	}
}

var (
	waldumpLSN   = regexp.MustCompile(`lsn: ([0-9A-F]+/[0-9A-F]+)`)
	waldumpBlock = regexp.MustCompile(`blkref #(\d+): rel (\d+/\d+/\d+)(?: fork (\w+))? blk (\d+)`)
)

// compareWaldump checks every record and block reference against
// pg_waldump's reading of the same WAL.
func compareWaldump(t *testing.T, w *realWAL) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	bin := w.c.ClientBin("pg_waldump")
	out, err := exec.CommandContext(ctx, bin, "-p", filepath.Join(w.c.DataDir, "pg_wal"), "-s", w.from.String(), "-e", w.to.String()).Output()
	if err != nil {
		t.Fatalf("pg_waldump: %v", err)
	}
	theirs := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := waldumpLSN.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var refs []string
		for _, b := range waldumpBlock.FindAllStringSubmatch(line, -1) {
			fork := b[3]
			if fork == "" {
				fork = "main"
			}
			refs = append(refs, fmt.Sprintf("%s %s %s %s", b[1], b[2], fork, b[4]))
		}
		l, err := pg.ParseLSN(m[1])
		if err != nil {
			t.Fatal(err)
		}
		theirs[l.String()] = refs
	}
	if len(theirs) != len(w.blocks) {
		t.Errorf("pg_waldump shows %d records from %s to %s, the reader decoded %d", len(theirs), w.from, w.to, len(w.blocks))
	}
	diffs := 0
	for lsn, want := range theirs {
		got, ok := w.blocks[lsn]
		if !ok || !slices.Equal(got, want) {
			if diffs++; diffs <= 10 {
				t.Errorf("record %s: blocks %q, pg_waldump %q", lsn, got, want)
			}
		}
	}
	t.Logf("%d records agree with pg_waldump", len(theirs)-diffs)
}

// compareSummaries checks the blocks and truncations found against the
// server's WAL summaries of the same range.
func compareSummaries(t *testing.T, w *realWAL) {
	c := w.c
	deadline := time.Now().Add(time.Minute)
	for lsnOf(t, c, "SELECT summarized_lsn::text FROM pg_get_wal_summarizer_state()") < w.to {
		if time.Now().After(deadline) {
			t.Fatal("the WAL summarizer did not reach the end of the workload")
		}
		time.Sleep(100 * time.Millisecond)
	}
	rows := c.QueryString(t, fmt.Sprintf(`SELECT coalesce(string_agg(format('%%s/%%s/%%s %%s %%s %%s', reltablespace, reldatabase, relfilenode, relforknumber, relblocknumber, is_limit_block), ';'), '')
FROM pg_available_wal_summaries() s, pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn)
WHERE s.start_lsn >= '%s' AND s.end_lsn <= '%s'`, w.from, w.to))
	theirBlocks, theirLimits := map[string]bool{}, map[string]uint32{}
	for _, row := range strings.Split(rows, ";") {
		f := strings.Fields(row)
		if len(f) != 4 {
			continue
		}
		fork, _ := strconv.Atoi(f[1])
		blk, _ := strconv.ParseUint(f[2], 10, 32)
		key := f[0] + " " + pg.Fork(fork).String()
		if f[3] == "t" {
			if old, ok := theirLimits[key]; !ok || uint32(blk) < old {
				theirLimits[key] = uint32(blk)
			}
			continue
		}
		theirBlocks[fmt.Sprintf("%s %d", key, blk)] = true
	}
	ours, ourLimits := map[string]bool{}, map[string]uint32{}
	for _, e := range w.effects {
		key := e.Rel.String() + " " + e.Fork.String()
		switch e.Kind {
		case pg.EffectBlock:
			ours[fmt.Sprintf("%s %d", key, e.Block)] = true
		case pg.EffectTruncate:
			if old, ok := ourLimits[key]; !ok || e.Block < old {
				ourLimits[key] = e.Block
			}
		case pg.EffectDatabase:
			ourLimits[fmt.Sprintf("%d/%d/0 main", e.Rel.Spc, e.Rel.DB)] = 0
		}
	}
	if len(theirBlocks) == 0 {
		t.Fatal("the server's summaries of the range are empty")
	}
	for k := range theirBlocks {
		if !ours[k] {
			t.Errorf("the server's summaries list block %s, the reader did not find it", k)
		}
	}
	for k := range ours {
		// A truncation drops the blocks past it from a summary: the
		// reader keeps them, which costs a read, never a page.
		i := strings.LastIndexByte(k, ' ')
		blk, _ := strconv.ParseUint(k[i+1:], 10, 32)
		if l, ok := ourLimits[k[:i]]; !theirBlocks[k] && !(ok && uint32(blk) >= l) {
			t.Errorf("the reader found block %s, the server's summaries do not list it", k)
		}
	}
	for k, l := range theirLimits {
		if strings.HasSuffix(k, " vm") {
			continue // the reader says 0 for a truncated visibility map (see WALRecordEffects)
		}
		if ol, ok := ourLimits[k]; !ok || ol != l {
			t.Errorf("the server's summaries cut %s at %d; the reader: %d (%v)", k, l, ol, ok)
		}
	}
	t.Logf("%d blocks and %d truncations agree with the server's WAL summaries", len(theirBlocks), len(theirLimits))
}
