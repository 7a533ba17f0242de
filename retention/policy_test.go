package retention

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

const segSize = 16 << 20

var day0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// snap makes a synthetic snapshot named name that stopped at stop, on
// timeline tli, starting in segment seg.
func snap(name string, stop time.Time, tli uint32, seg uint64) *repo.Snapshot {
	start := seg*segSize + 0x28
	return &repo.Snapshot{ID: name, Cluster: 1, StartTime: stop.Add(-time.Minute), StopTime: stop,
		StartTimeline: tli, StopTimeline: tli, StartLSN: start, StopLSN: start + 0x1000, WALSegmentSize: segSize}
}

func days(n int) time.Time { return day0.Add(time.Duration(n) * 24 * time.Hour) }

func kept(ds []Decision) string {
	var out []string
	for _, d := range ds {
		if d.Keep {
			out = append(out, d.Snapshot.ID)
		}
	}
	return strings.Join(out, ",")
}

func history(tli pg.TimelineID, entries ...pg.HistoryEntry) pg.History {
	return pg.History{Timeline: tli, Entries: entries}
}

func TestPlan(t *testing.T) {
	// Ten daily snapshots on timeline 1, named so that their names sort
	// against their times.
	var daily []*repo.Snapshot
	for i := range 10 {
		daily = append(daily, snap(fmt.Sprintf("s%02d", 99-i), days(i), 1, uint64(10*i+2)))
	}
	// Two a day for three days.
	var twice []*repo.Snapshot
	for i := range 6 {
		twice = append(twice, snap(fmt.Sprintf("t%d", i), days(i/2).Add(time.Duration(i%2)*6*time.Hour), 1, uint64(10*i+2)))
	}
	// A timeline reset: pg_resetwal-like, the newest snapshots are on
	// timeline 1 at low LSNs, the older ones on timeline 3 at high LSNs.
	reset := []*repo.Snapshot{
		snap("a-newest", days(5), 1, 3),
		snap("b-newer", days(4), 1, 2),
		snap("y-old", days(2), 3, 900),
		snap("z-older", days(1), 3, 800),
	}
	// Weeks and months.
	var long []*repo.Snapshot
	for i := range 100 {
		long = append(long, snap(fmt.Sprintf("l%03d", i), days(i), 1, uint64(i+2)))
	}
	// A promotion on day 3 in segment 35: timeline 2 branches from 1.
	tl2 := history(2, pg.HistoryEntry{Parent: 1, SwitchPoint: pg.LSN(35*segSize + 0x100)})
	branch := []*repo.Snapshot{
		snap("b1", days(1), 1, 10),
		snap("b2", days(2), 1, 20),
		snap("b3-on-1-after-branch", days(4), 1, 40),
		snap("b4-on-2", days(5), 2, 50),
	}

	names := func(ss []*repo.Snapshot, idx ...int) string {
		var out []string
		for _, i := range idx {
			out = append(out, ss[i].ID)
		}
		return strings.Join(out, ",")
	}
	now := days(9).Add(12 * time.Hour)
	for _, tc := range []struct {
		name  string
		snaps []*repo.Snapshot
		p     Policy
		lin   Lineage
		now   time.Time
		want  string
		pitr  string // kept with PITR (WAL to the head)
	}{
		{"last 3", daily, Policy{Last: 3}, Lineage{}, now, names(daily, 7, 8, 9), names(daily, 9)},
		{"last 1 keeps only the newest", daily, Policy{Last: 1}, Lineage{}, now, names(daily, 9), names(daily, 9)},
		{"last 20 keeps all", daily, Policy{Last: 20}, Lineage{}, now, names(daily, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9), names(daily, 9)},
		{"within 72h plus the window's base", daily, Policy{Within: 72 * time.Hour}, Lineage{}, now,
			names(daily, 6, 7, 8, 9), names(daily, 6, 7, 8, 9)},
		{"within 1h keeps the newest as the base", daily, Policy{Within: time.Hour}, Lineage{}, now, names(daily, 9), names(daily, 9)},
		{"within before the first backup keeps all", daily, Policy{Within: 30 * 24 * time.Hour}, Lineage{}, now,
			names(daily, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9), names(daily, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)},
		{"daily 2 keeps the newest of each day", twice, Policy{Daily: 2}, Lineage{}, days(3), names(twice, 3, 5), names(twice, 5)},
		{"last 1 and daily 3", twice, Policy{Last: 1, Daily: 3}, Lineage{}, days(3), names(twice, 1, 3, 5), names(twice, 5)},
		{"timeline reset: by time, not LSN, timeline or name", reset, Policy{Last: 2}, Lineage{}, days(6), "b-newer,a-newest", "a-newest"},
		{"timeline reset within", reset, Policy{Within: 36 * time.Hour}, Lineage{}, days(5).Add(time.Hour), "b-newer,a-newest", "b-newer,a-newest"},
		{"weekly 3", long, Policy{Weekly: 3}, Lineage{}, days(100),
			// days(99) is Monday 2026-06-08 (ISO week 24); the weeks
			// before end on Sundays days(98) and days(91).
			names(long, 91, 98, 99), names(long, 99)},
		{"monthly 2", long, Policy{Monthly: 2}, Lineage{}, days(100),
			// 2026-06 ends at days(99); 2026-05 at days(91) (May 31).
			names(long, 91, 99), names(long, 99)},
		{"branch: window base for each active timeline", branch, Policy{Within: 60 * time.Hour},
			Lineage{Histories: map[pg.TimelineID]pg.History{2: tl2}, Active: []pg.TimelineID{1, 2}}, days(5).Add(12 * time.Hour),
			// Window from day 3 00:00: b3 (timeline 1) and b4 (2) are in
			// it; the base for both timelines is b2 (stopped day 2 before
			// the branch).
			"b2,b3-on-1-after-branch,b4-on-2", "b2,b3-on-1-after-branch,b4-on-2"},
		{"branch: base that does not lead to the timeline is skipped", branch, Policy{Within: 12 * time.Hour},
			Lineage{Histories: map[pg.TimelineID]pg.History{2: tl2}, Active: []pg.TimelineID{1, 2}}, days(5).Add(6 * time.Hour),
			// Window from day 4 18:00: b4 in it. Base for timeline 1 is b3;
			// for timeline 2, b3 (after the branch on 1) does not lead
			// there: b2 does.
			"b2,b3-on-1-after-branch,b4-on-2", "b2,b3-on-1-after-branch,b4-on-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := Plan(tc.snaps, tc.p, tc.lin, tc.now)
			if got := kept(ds); got != tc.want {
				t.Errorf("kept %s, want %s", got, tc.want)
				for _, d := range ds {
					t.Logf("%s stop %s keep %v %v", d.Snapshot.ID, d.Snapshot.StopTime, d.Keep, d.Reasons)
				}
			}
			var pitr []string
			for _, d := range ds {
				if d.PITR {
					pitr = append(pitr, d.Snapshot.ID)
				}
			}
			if got := strings.Join(pitr, ","); got != tc.pitr {
				t.Errorf("PITR %s, want %s", got, tc.pitr)
			}
			// The newest snapshot is always kept.
			if !ds[len(ds)-1].Keep {
				t.Errorf("the newest snapshot is not kept")
			}
		})
	}
}

func TestPlanOrdersByRecordedTime(t *testing.T) {
	// Same stop time: the LSN decides; names are ignored.
	a := snap("zzz", days(1), 1, 5)
	b := snap("aaa", days(1), 1, 6)
	ds := Plan([]*repo.Snapshot{b, a}, Policy{Last: 1}, Lineage{}, days(2))
	if got := kept(ds); got != "aaa" {
		t.Fatalf("kept %s, want aaa (the higher stop LSN)", got)
	}
}

// walFiles makes segment files first..last on timeline tli.
func walFiles(tli pg.TimelineID, first, last pg.SegNo) []WALFile {
	var out []WALFile
	for s := first; s <= last; s++ {
		name := pg.SegmentName(tli, s, segSize)
		f, _ := pg.ParseWALFileName(name)
		out = append(out, WALFile{Key: name, File: f, Seg: s, Size: 1})
	}
	return out
}

// deleted describes the deleted files as runs per timeline.
func deleted(del []WALFile) string {
	r := walarchive.Ranges{}
	for _, f := range del {
		r.Add(f.File.Timeline, f.Seg, f.Seg)
	}
	r = walarchive.MergeRanges(r, nil)
	var tls []pg.TimelineID
	for t := range r {
		tls = append(tls, t)
	}
	slices.Sort(tls)
	var out []string
	for _, t := range tls {
		for _, x := range r[t] {
			out = append(out, fmt.Sprintf("%d:%d-%d", t, x.First, x.Last))
		}
	}
	return strings.Join(out, " ")
}

func TestPlanWAL(t *testing.T) {
	tl2 := history(2, pg.HistoryEntry{Parent: 1, SwitchPoint: pg.LSN(15*segSize + 0x100)})
	s1 := snap("s1", days(1), 1, 2)
	s2 := snap("s2", days(2), 1, 10)
	s3 := snap("s3", days(3), 1, 20)
	s3b := snap("s3b", days(3), 2, 20)
	linear := walFiles(1, 1, 30)
	branched := append(walFiles(1, 1, 25), walFiles(2, 15, 30)...)
	unknown := append(walFiles(1, 1, 30), walFiles(3, 5, 8)...)
	lin2 := Lineage{Histories: map[pg.TimelineID]pg.History{2: tl2}}
	for _, tc := range []struct {
		name  string
		snaps []*repo.Snapshot
		p     Policy
		lin   Lineage
		files []WALFile
		now   time.Time
		want  string
	}{
		{"newest only: everything before its start goes", []*repo.Snapshot{s1, s2, s3}, Policy{Last: 1}, Lineage{}, linear, days(4), "1:1-19"},
		{"long-term keeps start to stop", []*repo.Snapshot{s1, s2, s3}, Policy{Last: 1, Daily: 3}, Lineage{}, linear, days(4),
			"1:1-1 1:3-9 1:11-19"},
		{"window keeps all from its base", []*repo.Snapshot{s1, s2, s3}, Policy{Within: 24 * time.Hour}, Lineage{}, linear, days(3).Add(time.Hour),
			"1:1-9"},
		{"branch: newest on timeline 2", []*repo.Snapshot{s1, s2, s3b}, Policy{Last: 1}, lin2, branched, days(4),
			"1:1-19 2:15-19"},
		{"branch: PITR from before the branch keeps both timelines", []*repo.Snapshot{s1, s2, s3b}, Policy{Within: 24 * time.Hour},
			Lineage{Histories: lin2.Histories, Active: []pg.TimelineID{1, 2}}, branched, days(3).Add(time.Hour),
			// The window starts day 2 01:00; its base on both timelines is
			// s2: timeline 1 from 10 on, timeline 2 from 15 on.
			"1:1-9"},
		{"unknown timeline keeps all its WAL", []*repo.Snapshot{s1, s2, s3}, Policy{Last: 1},
			Lineage{Unknown: []pg.TimelineID{3}}, unknown, days(4), "1:1-19"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := Plan(tc.snaps, tc.p, tc.lin, tc.now)
			if got := deleted(PlanWAL(ds, tc.lin, tc.files, segSize)); got != tc.want {
				t.Errorf("deleted %s, want %s (kept %s)", got, tc.want, kept(ds))
			}
		})
	}
}

func TestPlanWALNothingKeptDeletesNothing(t *testing.T) {
	if del := PlanWAL(nil, Lineage{}, walFiles(1, 1, 5), segSize); len(del) != 0 {
		t.Fatalf("WAL of a cluster without snapshots deleted: %v", deleted(del))
	}
}
