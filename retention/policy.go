// Package retention decides which snapshots and which archived WAL a
// retention policy keeps (tidemark expire), and removes the rest: snapshot
// objects and WAL segments. The packs that only removed snapshots used are
// left for garbage collection (package gc), which can tell them apart from
// packs that a backup in progress is about to use.
//
// Snapshots are ordered by their recorded stop time and stop LSN, never by
// their names or timeline numbers (WAL-G #636: retention deleted the newest
// backups after pg_upgrade reset the timeline). The newest snapshot of a
// cluster is never removed.
//
// It is not the garbage collector and does not touch packs or the index.
package retention

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// Policy says what to keep. A zero field keeps nothing by that rule.
type Policy struct {
	// Within is the point-in-time window: every snapshot that stopped in
	// the last Within, plus, on every timeline with recoverable points in
	// the window, the newest snapshot that stopped before it, and all the
	// WAL from that snapshot's start on: any moment of the window can be
	// recovered.
	Within time.Duration
	// Last keeps the newest Last snapshots.
	Last int
	// Daily, Weekly and Monthly keep the newest snapshot of each of the
	// newest that many days, ISO weeks and months that have one (by stop
	// time, UTC).
	Daily, Weekly, Monthly int
}

// Empty reports whether the policy keeps nothing by any rule (then expire
// refuses to run rather than keep only the newest snapshot).
func (p Policy) Empty() bool {
	return p.Within <= 0 && p.Last <= 0 && p.Daily <= 0 && p.Weekly <= 0 && p.Monthly <= 0
}

func (p Policy) String() string {
	var parts []string
	if p.Within > 0 {
		parts = append(parts, "within "+p.Within.String())
	}
	for _, r := range []struct {
		n    int
		name string
	}{{p.Last, "last"}, {p.Daily, "daily"}, {p.Weekly, "weekly"}, {p.Monthly, "monthly"}} {
		if r.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r.name, r.n))
		}
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// Decision is what the policy says about one snapshot.
type Decision struct {
	Snapshot *repo.Snapshot
	Keep     bool
	// Reasons say why it is kept ("newest", "last 3", "within 168h0m0s",
	// "window base for timeline 2", "daily 2026-05-01", ...).
	Reasons []string
	// PITR: the snapshot is a starting point for recovery to any later
	// moment, so the WAL from its start to the archive head is kept on
	// every timeline it leads to. A snapshot kept otherwise keeps only the
	// WAL from its start to its stop (what it needs to become consistent).
	PITR bool
}

// Order sorts snapshots oldest first by recorded stop time, then stop LSN,
// then start time; the id only breaks exact ties, deterministically.
func Order(snaps []*repo.Snapshot) []*repo.Snapshot {
	out := slices.Clone(snaps)
	slices.SortStableFunc(out, func(a, b *repo.Snapshot) int {
		return cmp.Or(a.StopTime.Compare(b.StopTime), cmp.Compare(a.StopLSN, b.StopLSN),
			a.StartTime.Compare(b.StartTime), strings.Compare(a.ID, b.ID))
	})
	return out
}

// Lineage tells which timelines a snapshot leads to: the archive's
// timelines and their histories. A timeline whose history is unknown (no
// .history file archived) is left out of Histories and listed in Unknown.
type Lineage struct {
	Histories map[pg.TimelineID]pg.History
	Unknown   []pg.TimelineID
	// Active are the timelines with recoverable points in the window:
	// WAL archived during it (and the timelines of snapshots in it, which
	// Plan adds itself).
	Active []pg.TimelineID
}

// history returns the history of tli (timeline 1 needs no file).
func (l Lineage) history(tli pg.TimelineID) (pg.History, bool) {
	if h, ok := l.Histories[tli]; ok {
		return h, true
	}
	if tli == 1 {
		return pg.History{Timeline: 1}, true
	}
	return pg.History{}, false
}

// leadsTo reports whether recovery from s can continue along timeline tli.
func (l Lineage) leadsTo(s *repo.Snapshot, tli pg.TimelineID) bool {
	h, ok := l.history(tli)
	return ok && h.CanRecoverFrom(pg.TimelineID(s.StopTimeline), pg.LSN(s.StopLSN))
}

// Plan applies the policy to the snapshots of one cluster at time now. The
// result is in the order of Order. With no snapshot it is empty.
func Plan(snaps []*repo.Snapshot, p Policy, lin Lineage, now time.Time) []Decision {
	ordered := Order(snaps)
	ds := make([]Decision, len(ordered))
	for i, s := range ordered {
		ds[i].Snapshot = s
	}
	keep := func(i int, pitr bool, reason string) {
		ds[i].Keep = true
		ds[i].PITR = ds[i].PITR || pitr
		ds[i].Reasons = append(ds[i].Reasons, reason)
	}
	n := len(ds)
	if n == 0 {
		return ds
	}
	// The newest snapshot always stays, and recovery from it to the end of
	// the archive stays possible.
	keep(n-1, true, "newest")
	for i := n - 1; i >= 0 && i >= n-p.Last; i-- {
		keep(i, false, fmt.Sprintf("last %d", p.Last))
	}
	if p.Within > 0 {
		start := now.Add(-p.Within)
		active := map[pg.TimelineID]bool{}
		for _, t := range lin.Active {
			active[t] = true
		}
		for i, d := range ds {
			if !d.Snapshot.StopTime.Before(start) {
				keep(i, true, "within "+p.Within.String())
				active[pg.TimelineID(d.Snapshot.StopTimeline)] = true
			}
		}
		// The base of the window's first moments: per timeline with points
		// in the window, the newest snapshot that stopped before it and
		// leads there.
		tls := make([]pg.TimelineID, 0, len(active))
		for t := range active {
			tls = append(tls, t)
		}
		slices.Sort(tls)
		for _, t := range tls {
			for i := n - 1; i >= 0; i-- {
				s := ds[i].Snapshot
				if s.StopTime.Before(start) && lin.leadsTo(s, t) {
					keep(i, true, fmt.Sprintf("window base for timeline %d", t))
					break
				}
			}
		}
	}
	bucketKeep := func(count int, name string, bucket func(time.Time) string) {
		if count <= 0 {
			return
		}
		seen := map[string]bool{}
		for i := n - 1; i >= 0 && len(seen) < count; i-- {
			b := bucket(ds[i].Snapshot.StopTime.UTC())
			if seen[b] {
				continue
			}
			seen[b] = true
			keep(i, false, name+" "+b)
		}
	}
	bucketKeep(p.Daily, "daily", func(t time.Time) string { return t.Format("2006-01-02") })
	bucketKeep(p.Weekly, "weekly", func(t time.Time) string {
		y, w := t.ISOWeek()
		return fmt.Sprintf("%04d-W%02d", y, w)
	})
	bucketKeep(p.Monthly, "monthly", func(t time.Time) string { return t.Format("2006-01") })
	return ds
}
