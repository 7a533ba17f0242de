package backup

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
)

// TestSummarySourcesAgree: on 17 and 18 with summarize_wal on, tidemark's
// block summaries and PostgreSQL's WAL summaries of the same range agree
// (every block PostgreSQL lists is in the block summaries, which list more
// only past a truncation, where a backup reads anyway), and a backup
// reports both sources and uses the one that reads fewer pages.
func TestSummarySourcesAgree(t *testing.T) {
	for _, v := range []int{17, 18} {
		t.Run("pg"+strconv.Itoa(v), func(t *testing.T) {
			t.Parallel()
			c, a := newCluster(t, v, map[string]string{"summarize_wal": "on", "autovacuum": "off"})
			w := newWorkload(t, c, testSeed(t))
			r := newTestRepo(t, 1<<20)
			opts := backupOpts(t, c, a)
			parent := mustBackup(t, r, opts)
			w.step()
			w.step()
			c.Exec(t, "CHECKPOINT")
			to, err := pg.ParseLSN(c.QueryString(t, "SELECT redo_lsn::text FROM pg_control_checkpoint()"))
			if err != nil {
				t.Fatal(err)
			}
			from := pg.LSN(parent.Snapshot.StartLSN)
			srv, err := connect(t.Context(), c.ConnString())
			if err != nil {
				t.Fatal(err)
			}
			defer srv.close(t.Context())
			hist := pg.History{Timeline: 1}
			theirs, reason, err := loadSummary(t.Context(), srv, hist, from, to, time.Minute)
			if err != nil || theirs == nil {
				t.Fatalf("PostgreSQL's summaries: %v %s", err, reason)
			}
			ours, reason, err := loadBlockSummaries(t.Context(), a, blockSummaryRange{cluster: srv.SystemID, hist: hist, from: from, to: to,
				segSize: uint32(srv.WALSegSize), major: v, pgwal: c.DataDir + "/pg_wal"})
			if err != nil || ours == nil {
				t.Fatalf("block summaries: %v %s", err, reason)
			}
			compareSources(t, ours, theirs)

			res := mustBackup(t, r, opts)
			if len(res.Sources) != 2 {
				t.Fatalf("sources %+v, want both", res.Sources)
			}
			used, other := res.Sources[0], res.Sources[1]
			if other.Used {
				used, other = other, used
			}
			if !used.Used || used.Reason != "" || other.Reason != "" || used.Pages > other.Pages || res.Method != used.Method {
				t.Fatalf("sources %+v, method %s: want the one with fewer pages used", res.Sources, res.Method)
			}
			t.Logf("sources: %+v", res.Sources)
		})
	}
}

// blocksOf lists rc's blocks, from its bitmap and its list.
func blocksOf(rc *relChanges) []uint32 {
	var out []uint32
	for b := range rc.covered() {
		if rc.has(uint32(b)) {
			out = append(out, uint32(b))
		}
	}
	return append(out, rc.blocks...)
}

// compareSources checks block summaries (ours) against PostgreSQL's WAL
// summaries (theirs) of the same range.
func compareSources(t *testing.T, ours, theirs *summary) {
	t.Helper()
	blocks := func(s *summary) map[string]bool {
		m := map[string]bool{}
		for k, rc := range s.rels {
			if k.fork == pg.ForkFSM {
				continue
			}
			for _, b := range blocksOf(rc) {
				m[fmt.Sprintf("%d/%d/%d %s %d", k.spc, k.db, k.rel, k.fork, b)] = true
			}
		}
		return m
	}
	ob, tb := blocks(ours), blocks(theirs)
	n := 0
	for k := range tb {
		if !ob[k] {
			if n++; n <= 10 {
				t.Errorf("PostgreSQL's summaries list block %s, the block summaries do not", k)
			}
		}
	}
	for k, rc := range ours.rels {
		for _, b := range blocksOf(rc) {
			key := fmt.Sprintf("%d/%d/%d %s %d", k.spc, k.db, k.rel, k.fork, b)
			if !tb[key] && k.fork != pg.ForkFSM {
				if trc := theirs.rels[k]; trc == nil || b < trc.limit {
					if n++; n <= 10 {
						t.Errorf("the block summaries list block %s, PostgreSQL's do not and do not cut the fork before it", key)
					}
				}
			}
		}
	}
	for k, trc := range theirs.rels {
		if trc.limit == noLimit || k.fork == pg.ForkVM {
			continue // the block summaries cut a truncated visibility map at 0
		}
		if orc := ours.rels[k]; orc == nil || orc.limit != trc.limit {
			t.Errorf("PostgreSQL's summaries cut %+v at %d, the block summaries %+v", k, trc.limit, orc)
		}
	}
	t.Logf("%d blocks from PostgreSQL's summaries, %d from the block summaries", len(tb), len(ob))
}
