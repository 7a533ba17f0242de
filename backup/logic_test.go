package backup

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

func TestCoverRange(t *testing.T) {
	// Timeline 2 branched from 1 at 0/5000000.
	hist := pg.History{Timeline: 2, Entries: []pg.HistoryEntry{{Parent: 1, SwitchPoint: 0x5000000}}}
	f := func(tli pg.TimelineID, a, b pg.LSN) summaryFile { return summaryFile{tli: tli, start: a, end: b} }
	for _, tc := range []struct {
		name     string
		avail    []summaryFile
		from, to pg.LSN
		want     int // files picked; -1: not covered
	}{
		{"one timeline, contiguous", []summaryFile{f(2, 0x5000000, 0x6000000), f(2, 0x6000000, 0x7000000)}, 0x5800000, 0x7000000, 2},
		{"gap", []summaryFile{f(2, 0x5000000, 0x6000000), f(2, 0x6100000, 0x7000000)}, 0x5800000, 0x7000000, -1},
		{"short of the end", []summaryFile{f(2, 0x5000000, 0x6000000)}, 0x5800000, 0x7000000, -1},
		{"across the branch", []summaryFile{f(1, 0x4000000, 0x5000000), f(2, 0x5000000, 0x7000000)}, 0x4800000, 0x6000000, 2},
		// The abandoned timeline 1 went on past the branch: its summary
		// of that stretch must not stand in for timeline 2's.
		{"abandoned timeline", []summaryFile{f(1, 0x4000000, 0x7000000)}, 0x4800000, 0x6000000, -1},
		{"overlapping files", []summaryFile{f(2, 0x5000000, 0x6800000), f(2, 0x6000000, 0x7000000)}, 0x5000000, 0x7000000, 2},
		{"irrelevant files ignored", []summaryFile{f(2, 0x1000, 0x2000), f(2, 0x5000000, 0x7000000), f(3, 0x5000000, 0x7000000)}, 0x5000000, 0x7000000, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := coverRange(tc.avail, hist, tc.from, tc.to)
			switch {
			case tc.want < 0 && reason == "":
				t.Fatalf("covered by %v, want not covered", got)
			case tc.want >= 0 && reason != "":
				t.Fatalf("not covered: %s", reason)
			case tc.want >= 0 && len(got) != tc.want:
				t.Fatalf("picked %v, want %d files", got, tc.want)
			}
		})
	}
}

// changedPages lists the pages under n that fc says changed.
func changedPages(fc fileChanges, n uint32) []uint32 {
	var out []uint32
	for p := range n {
		if fc.changed(p) {
			out = append(out, p)
		}
	}
	return out
}

func TestSummaryForFile(t *testing.T) {
	const seg = 131072
	s := newSummary(MethodSummaries, 0, 1)
	for _, b := range []uint32{7, seg + 3, 1} {
		s.addBlock(relKey{1663, 5, 100, pg.ForkMain}, b)
	}
	s.addBlock(relKey{1663, 5, 101, pg.ForkMain}, 4)
	s.setLimit(relKey{1663, 5, 101, pg.ForkMain}, seg+10)
	s.setLimit(relKey{1663, 6, 0, pg.ForkMain}, 0)
	s.finish()
	rel := func(db, n, segno uint32) pg.RelFile {
		return pg.RelFile{Tablespace: 1663, Database: db, RelNumber: n, Segment: segno}
	}
	fc := s.forFile(rel(5, 100, 0), seg)
	if got := changedPages(fc, seg); !slices.Equal(got, []uint32{1, 7}) || fc.limit != noLimit || !fc.anyChanged(7, 8) || fc.anyChanged(2, 7) {
		t.Errorf("segment 0: %v, %+v", got, fc)
	}
	if fc := s.forFile(rel(5, 100, 1), seg); !slices.Equal(changedPages(fc, seg), []uint32{3}) || fc.anyChanged(0, 3) || !fc.anyChanged(0, 4) {
		t.Errorf("segment 1: %+v", fc)
	}
	if fc := s.forFile(rel(5, 101, 0), seg); fc.limit != noLimit || !fc.changed(4) || fc.changed(5) {
		t.Errorf("truncated past segment 0: %+v", fc)
	}
	if fc := s.forFile(rel(5, 101, 1), seg); fc.limit != 10 || !fc.changed(10) || fc.changed(9) || !fc.anyChanged(9, 11) {
		t.Errorf("truncated in segment 1: %+v", fc)
	}
	if fc := s.forFile(rel(5, 101, 2), seg); fc.limit != 0 {
		t.Errorf("segment past the truncation: %+v", fc)
	}
	if fc := s.forFile(rel(6, 555, 0), seg); fc.limit != 0 || !fc.changed(0) {
		t.Errorf("file of a database created in the range: %+v", fc)
	}
	if fc := s.forFile(rel(5, 999, 0), seg); fc.limit != noLimit || fc.changed(0) || fc.anyChanged(0, seg) {
		t.Errorf("untouched relation: %+v", fc)
	}
}

// TestSummaryBitmap: a fork whose blocks changed densely is held as a
// bitmap (a bit a block, not 4 bytes), one with a few far-apart blocks as
// a list, and a fork with both (dense at its start, a few blocks far past
// it) as both; lookups agree with the blocks added either way, across
// several files, whatever order and repeats the blocks came in.
func TestSummaryBitmap(t *testing.T) {
	const seg = 1 << 16
	r := rand.New(rand.NewPCG(1, 2))
	want := map[relKey]map[uint32]bool{}
	s := newSummary(MethodBlockSummaries, 0, 1)
	add := func(k relKey, b uint32) {
		if want[k] == nil {
			want[k] = map[uint32]bool{}
		}
		want[k][b] = true
		if r.IntN(2) == 0 {
			s.addBlock(k, b)
		} else {
			s.addBlocks(k, []uint32{b})
		}
	}
	dense, sparse, mixed := relKey{1663, 5, 1, pg.ForkMain}, relKey{1663, 5, 2, pg.ForkMain}, relKey{1663, 5, 3, pg.ForkMain}
	// The mixed fork's far blocks come first: they must not keep its
	// dense ones out of the bitmap.
	for range 100 {
		add(sparse, r.Uint32N(1<<31))
		add(mixed, 1<<30+r.Uint32N(1<<20))
	}
	for range 300_000 {
		add(dense, r.Uint32N(3*seg))
		add(mixed, r.Uint32N(seg))
	}
	s.finish()
	if rc := s.rels[dense]; len(rc.blocks) != 0 || len(rc.bits) != 3*seg/64 {
		t.Errorf("dense fork: %d listed, %d bitmap words; want a bitmap only", len(rc.blocks), len(rc.bits))
	}
	if rc := s.rels[sparse]; len(rc.bits) != 0 || len(rc.blocks) != len(want[sparse]) {
		t.Errorf("sparse fork: %d listed, %d bitmap words; want a list only", len(rc.blocks), len(rc.bits))
	}
	if rc := s.rels[mixed]; len(rc.bits) == 0 || len(rc.blocks) == 0 {
		t.Errorf("mixed fork: %d listed, %d bitmap words; want both", len(rc.blocks), len(rc.bits))
	}
	total := 0
	for k, blocks := range want {
		total += len(blocks)
		rc := s.rels[k]
		for range 20_000 {
			b := r.Uint32N(3 * seg)
			if r.IntN(2) == 0 {
				b = 1<<30 + r.Uint32N(1<<20)
			}
			if rc.has(b) != blocks[b] {
				t.Fatalf("%+v block %d: has %v, want %v", k, b, rc.has(b), blocks[b])
			}
			n := 1 + r.Uint32N(300)
			any := false
			for x := b; x < b+n; x++ {
				any = any || blocks[x]
			}
			if got := rc.anyIn(uint64(b), uint64(b+n)); got != any {
				t.Fatalf("%+v blocks %d..%d: anyIn %v, want %v", k, b, b+n, got, any)
			}
		}
		for segno := range uint32(3) {
			fc := s.forFile(pg.RelFile{Tablespace: k.spc, Database: k.db, RelNumber: k.rel, Segment: segno}, seg)
			for p := range uint32(seg) {
				if fc.changed(p) != blocks[segno*seg+p] {
					t.Fatalf("%+v segment %d page %d: changed %v", k, segno, p, fc.changed(p))
				}
			}
		}
	}
	if s.blocks != total {
		t.Errorf("summary counts %d blocks, %d were added", s.blocks, total)
	}
}

func TestChooseParent(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	snap := func(id string, tli uint32, start, stop uint64, at time.Duration) *repo.Snapshot {
		return &repo.Snapshot{ID: id, PGVersion: 170002, BlockSize: 8192, DataChecksums: true,
			StartLSN: start, StopLSN: stop, StartTimeline: tli, StopTimeline: tli, StopTime: t0.Add(at)}
	}
	c := cluster{major: 17, blockSize: 8192, checksums: true}
	hist := pg.History{Timeline: 2, Entries: []pg.HistoryEntry{{Parent: 1, SwitchPoint: 0x5000000}}}
	for _, tc := range []struct {
		name  string
		snaps []*repo.Snapshot
		want  string
	}{
		{"none", nil, ""},
		{"newest by LSN, not by name or time", []*repo.Snapshot{
			snap("b", 2, 0x6000000, 0x6100000, time.Hour), snap("a", 2, 0x6800000, 0x6900000, time.Minute)}, "a"},
		{"ancestor timeline before the branch", []*repo.Snapshot{snap("old", 1, 0x4000000, 0x4100000, 0)}, "old"},
		{"ancestor timeline after the branch", []*repo.Snapshot{snap("gone", 1, 0x5800000, 0x5900000, 0)}, ""},
		{"other timeline", []*repo.Snapshot{snap("x", 3, 0x6000000, 0x6100000, 0)}, ""},
		{"starts after this start", []*repo.Snapshot{snap("late", 2, 0x8100000, 0x8200000, 0)}, ""},
		{"same start (a standby's restartpoint)", []*repo.Snapshot{snap("same", 2, 0x8000000, 0x8200000, 0)}, "same"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := chooseParent(tc.snaps, hist, c, 0x8000000)
			if snapID(got) != tc.want {
				t.Fatalf("parent %q (%s), want %q", snapID(got), why, tc.want)
			}
			if got == nil && why == "" {
				t.Fatal("no parent and no reason")
			}
		})
	}
	other := snap("v16", 2, 0x6000000, 0x6100000, 0)
	other.PGVersion = 160004
	noSums := snap("nosum", 2, 0x6000000, 0x6100000, 0)
	noSums.DataChecksums = false
	for _, s := range []*repo.Snapshot{other, noSums} {
		if got, why := chooseParent([]*repo.Snapshot{s}, hist, c, 0x8000000); got != nil || why == "" {
			t.Errorf("%s chosen as parent (%s)", s.ID, why)
		}
	}
}

func TestRebaseShareSpreads(t *testing.T) {
	c := &capture{opts: &Options{RebaseSpread: 7}}
	days := map[int64]int{}
	for day := range int64(7) {
		c.day = day
		for s := range uint32(700) {
			if c.rebaseShare("base/5/16384", s*128) {
				days[day]++
			}
		}
	}
	total := 0
	for day, n := range days {
		total += n
		if n < 50 || n > 150 {
			t.Errorf("day %d takes %d of 700 slots", day, n)
		}
	}
	if total != 700 {
		t.Errorf("%d slots picked over a week, want each once (700)", total)
	}
}

func TestProgressString(t *testing.T) {
	p := Progress{Phase: PhaseCopy, Method: MethodLSNScan, TotalBytes: 4 << 30, DoneBytes: 1 << 30, ReadBytes: 1 << 30,
		StoredBytes: 100 << 20, Rate: 200 << 20, ETA: 15 * time.Second}
	s := p.String()
	for _, want := range []string{"25.0%", "1.0 GiB of 4.0 GiB", "stored 100.0 MiB", "200.0 MiB/s", "eta 15s"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
}

// TestUnsupportedVersionRefused: a data directory of a version outside the
// supported range is refused before anything is written to the repository,
// with a message naming the range.
func TestUnsupportedVersionRefused(t *testing.T) {
	for _, v := range []string{"12\n", "19\n", "9.6\n"} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		r := newTestRepo(t, 1<<20)
		_, err := Run(t.Context(), r.Repo, Options{PGData: dir})
		if !errors.Is(err, ErrRefused) || !errors.Is(err, pg.ErrUnsupportedVersion) || !strings.Contains(err.Error(), pg.SupportedVersions()) {
			t.Fatalf("PG_VERSION %q: %v", v, err)
		}
		for oi, err := range r.store.List(t.Context(), "leases/", "") {
			t.Fatalf("PG_VERSION %q: the refused backup wrote %s (%v)", v, oi.Key, err)
		}
	}
}
