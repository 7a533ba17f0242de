package restore

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// Timeline 2 branched from 1 in the middle of segment 5 (1 MiB segments).
// Backup A: timeline 1, stops in segment 3. B: timeline 1, stops in
// segment 7, after the branch (it cannot lead to timeline 2). C: timeline 2,
// stops in segment 9.
func branchFixture() (timelines, []*repo.Snapshot, *fakeArchive) {
	h2 := pg.History{Timeline: 2, Entries: []pg.HistoryEntry{{Parent: 1, SwitchPoint: 0x580000}}}
	snap := func(id string, tli uint32, start, stop uint64, at time.Duration) *repo.Snapshot {
		return &repo.Snapshot{ID: id, StartTimeline: tli, StopTimeline: tli, StartLSN: start, StopLSN: stop, StopTime: t0.Add(at), WALSegmentSize: testSegSize}
	}
	snaps := []*repo.Snapshot{
		snap("A", 1, 0x200028, 0x300100, 0),
		snap("B", 1, 0x600028, 0x700100, time.Hour),
		snap("C", 2, 0x800028, 0x900100, 2*time.Hour),
	}
	a := newArchive()
	a.hists = []pg.History{h2}
	a.addRange(1, 1, 7)
	a.addRange(2, 5, 10)
	return newTimelines(a.hists), snaps, a
}

func TestChooseTimelineAndSnapshot(t *testing.T) {
	ctx := context.Background()
	tl, snaps, _ := branchFixture()
	noXID := func(context.Context, *repo.Snapshot) (uint64, error) { return 0, errors.New("unused") }

	// Default: the newest backup's timeline, 2, with a hint about nothing
	// else (no timeline branched from 2).
	h, why, err := chooseTimeline(tl, snaps, nil, 0, false)
	if err != nil || h.Timeline != 2 || !strings.Contains(why, "newest backup C") {
		t.Fatalf("default timeline %d (%s): %v", h.Timeline, why, err)
	}
	// On timeline 2 at segment 8, B cannot lead there (timeline 1 ended
	// before B became consistent) and C ends after: A.
	s, err := chooseSnapshot(ctx, snaps, h, nil, pg.RecoveryTarget{Kind: pg.TargetLSN, LSN: 0x880000}, noXID)
	if err != nil || s.ID != "A" {
		t.Fatalf("chose %v: %v", s, err)
	}
	s, _ = chooseSnapshot(ctx, snaps, h, nil, pg.RecoveryTarget{Kind: pg.TargetLSN, LSN: 0xA00000}, noXID)
	if s.ID != "C" {
		t.Errorf("chose %s for a target after C", s.ID)
	}

	// Explicitly timeline 1: B is the newest that fits; the hint names
	// timeline 2 when timeline 1 is the default.
	h1, _, err := chooseTimeline(tl, snaps, nil, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	s, _ = chooseSnapshot(ctx, snaps, h1, nil, pg.RecoveryTarget{Kind: pg.TargetLSN, LSN: 0x780000}, noXID)
	if s.ID != "B" {
		t.Errorf("timeline 1: chose %s", s.ID)
	}
	_, why, _ = chooseTimeline(tl, snaps[:2], nil, 0, false)
	if !strings.Contains(why, "timeline 2 (branched from 1 at 0/580000)") {
		t.Errorf("no hint about timeline 2: %s", why)
	}
	// A backup that cannot lead to the timeline is refused.
	if _, err := chooseSnapshot(ctx, snaps, h, snaps[1], pg.RecoveryTarget{}, noXID); !errors.Is(err, ErrRefused) {
		t.Errorf("B along timeline 2: %v", err)
	}
	// Time targets compare stop times.
	s, _ = chooseSnapshot(ctx, snaps, h1, nil, pg.RecoveryTarget{Kind: pg.TargetTime, Time: t0.Add(90 * time.Minute)}, noXID)
	if s.ID != "B" {
		t.Errorf("time target chose %s", s.ID)
	}
	// Xid targets compare the next xid at each backup's start.
	xids := map[string]uint64{"A": 100, "B": 500, "C": 900}
	byXID := func(_ context.Context, s *repo.Snapshot) (uint64, error) { return xids[s.ID], nil }
	s, _ = chooseSnapshot(ctx, snaps, h1, nil, pg.RecoveryTarget{Kind: pg.TargetXID, XID: 499}, byXID)
	if s.ID != "A" {
		t.Errorf("xid target chose %s", s.ID)
	}
	if !xidNotBefore(5, 0xFFFFFFF0) || xidNotBefore(0xFFFFFFF0, 5) {
		t.Error("xid comparison ignores wraparound")
	}
}

func TestScanWAL(t *testing.T) {
	ctx := context.Background()
	tl, _, a := branchFixture()
	// Along timeline 2 from segment 2: 2-4 from timeline 1, 5-10 from 2.
	sp, err := scanWAL(ctx, a, 1, tl[2], 2, testSegSize)
	if err != nil || sp.last != 10 || sp.gap {
		t.Fatalf("timeline 2: %+v %v", sp, err)
	}
	// Along timeline 1 the run ends at 7.
	sp, _ = scanWAL(ctx, a, 1, tl[1], 6, testSegSize)
	if sp.last != 7 || sp.gap {
		t.Errorf("timeline 1: %+v", sp)
	}
	// A missing segment of timeline 2 is a gap with WAL after it.
	delete(a.segs[2], 7)
	sp, _ = scanWAL(ctx, a, 1, tl[2], 2, testSegSize)
	if sp.last != 6 || sp.head != 10 || !sp.gap {
		t.Errorf("gap: %+v", sp)
	}
	// Timeline 1's copy of segment 5 is not what recovery along 2 reads.
	a.addRange(2, 7, 7)
	delete(a.segs[2], 5)
	sp, _ = scanWAL(ctx, a, 1, tl[2], 2, testSegSize)
	if sp.last != 4 || !sp.gap {
		t.Errorf("switch segment missing: %+v", sp)
	}
	// Timeline 1 stopped being archived before the switch point.
	b := newArchive()
	b.hists = a.hists
	b.addRange(1, 1, 3)
	b.addRange(2, 5, 10)
	sp, _ = scanWAL(ctx, b, 1, tl[2], 2, testSegSize)
	if sp.last != 3 || !sp.gap {
		t.Errorf("ancestor cut short: %+v", sp)
	}
}
