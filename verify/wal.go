package verify

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// segRun is a run of missing segments along one history.
type segRun struct {
	tli         pg.TimelineID
	first, last pg.SegNo
}

// checkWAL checks, per cluster, the history files and the continuity of the
// archived WAL from every snapshot.
func (v *run) checkWAL(ctx context.Context) error {
	byCluster := map[uint64][]*repo.Snapshot{}
	for _, s := range v.snaps {
		byCluster[s.Cluster] = append(byCluster[s.Cluster], s)
	}
	clusters, err := v.a.Clusters(ctx)
	if err != nil {
		return fmt.Errorf("list the WAL archive's clusters: %w", err)
	}
	for c := range byCluster {
		if !slices.Contains(clusters, c) {
			clusters = append(clusters, c)
		}
	}
	slices.Sort(clusters)
	for _, c := range clusters {
		if err := v.checkCluster(ctx, c, byCluster[c]); err != nil {
			return err
		}
	}
	return nil
}

func (v *run) checkCluster(ctx context.Context, cluster uint64, snaps []*repo.Snapshot) error {
	l, err := v.a.List(ctx, cluster)
	if err != nil {
		return fmt.Errorf("list the WAL archive of cluster %d: %w", cluster, err)
	}
	segSize := l.Cluster.SegSize
	if segSize == 0 && len(snaps) > 0 {
		segSize = uint32(snaps[0].WALSegmentSize)
		l.Cluster.SegSize = segSize
	}
	if len(snaps) > 0 && l.Cluster.SystemID == 0 {
		for _, s := range snaps {
			v.problem("wal", walarchive.ClusterPrefix(cluster), "no WAL archived for this cluster at all", repo.SnapshotKey(s.Cluster, s.ID))
		}
		return nil
	}
	var segs int64
	for _, t := range l.Timelines {
		segs += int64(t.Count())
	}
	v.rep.Stats.WALSegments += segs
	v.rep.Stats.Timelines += len(l.Timelines)
	for _, k := range l.Foreign {
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s: not an archived WAL file in its place (a stray upload?); ignored", k))
	}
	expired, err := v.a.Expired(ctx, cluster)
	if err != nil {
		v.problem("wal", walarchive.ExpiredKey(cluster), errText(err), "")
		expired = walarchive.Ranges{}
	}

	// History files: each parses, agrees with its parent's, and with the
	// timelines archived.
	hists := map[pg.TimelineID]pg.History{1: {Timeline: 1}}
	var names []string
	for _, t := range l.Timelines {
		if !t.History || t.Timeline <= 1 {
			continue
		}
		name := pg.HistoryFileName(t.Timeline)
		names = append(names, name)
		h, err := v.a.History(ctx, cluster, t.Timeline)
		if err != nil {
			v.problem("history", historyKey(cluster, t.Timeline), errText(err), "")
			continue
		}
		hists[t.Timeline] = h
	}
	v.wal[cluster] = &clusterWAL{l: l, snaps: snaps, expired: expired, hists: hists}
	for tli, h := range hists {
		if tli == 1 || len(h.Entries) == 0 {
			continue
		}
		parent := h.Entries[len(h.Entries)-1].Parent
		if ph, ok := hists[parent]; ok {
			if err := h.Extends(ph); err != nil {
				v.problem("history", historyKey(cluster, tli), fmt.Sprintf("disagrees with %s: %v", pg.HistoryFileName(parent), err), "")
			}
		} else if parent > 1 {
			v.problem("history", historyKey(cluster, tli), fmt.Sprintf("names parent timeline %d, whose history file is not archived", parent), "")
		}
		// The timeline's own WAL cannot start before it began.
		begin := h.Entries[len(h.Entries)-1].SwitchPoint.Segment(segSize)
		if t := l.Timeline(tli); t != nil && len(t.Segments) > 0 && t.Segments[0].First < begin {
			v.problem("history", historyKey(cluster, tli), fmt.Sprintf("timeline %d began in segment %s by its history, but %s is archived on it",
				tli, l.SegmentName(tli, begin), l.SegmentName(tli, t.Segments[0].First)), "")
		}
	}
	missingHist := l.MissingHistory()
	for _, tli := range missingHist {
		var on []string
		for _, s := range snaps {
			if pg.TimelineID(s.StopTimeline) == tli {
				on = append(on, repo.SnapshotKey(s.Cluster, s.ID))
			}
		}
		p := v.problem("history", historyKey(cluster, tli), fmt.Sprintf("timeline %d has archived WAL but no history file (was archiving turned on after a promotion?): recovery cannot follow it; copy pg_wal/%s from the server into the archive with tidemark wal-push", tli, pg.HistoryFileName(tli)), "")
		for _, k := range on {
			v.problem(p.Kind, p.Object, p.Message, k)
		}
	}
	for _, s := range snaps {
		tli := pg.TimelineID(s.StopTimeline)
		if _, ok := hists[tli]; !ok && !slices.Contains(missingHist, tli) {
			v.problem("history", historyKey(cluster, tli), fmt.Sprintf("snapshots were taken on timeline %d, whose history file is not archived", tli), repo.SnapshotKey(s.Cluster, s.ID))
		}
	}

	// Continuity: along every timeline X with archived WAL, from each
	// snapshot that leads to X up to X's newest archived segment.
	var tlNames []string
	for _, t := range l.Timelines {
		if len(t.Segments) == 0 {
			continue
		}
		x := t.Timeline
		h, ok := hists[x]
		if !ok {
			continue
		}
		tlNames = append(tlNames, fmt.Sprint(x))
		head := t.Segments[len(t.Segments)-1].Last
		var from []*repo.Snapshot
		minStart := head + 1
		for _, s := range snaps {
			if h.CanRecoverFrom(pg.TimelineID(s.StopTimeline), pg.LSN(s.StopLSN)) {
				from = append(from, s)
				minStart = min(minStart, pg.LSN(s.StartLSN).Segment(segSize))
			}
		}
		if len(from) == 0 {
			continue
		}
		runs := missingRuns(l, h, minStart, head, segSize)
		for _, r := range runs {
			firstName, lastName := l.SegmentName(r.tli, r.first), l.SegmentName(r.tli, r.last)
			span := firstName
			if r.last != r.first {
				span += ".." + lastName
			}
			if expired.Covers(r.tli, r.first, r.last) {
				note := fmt.Sprintf("cluster %d: %s (%d segment(s)) removed on purpose by tidemark expire; recovery from older snapshots along timeline %d cannot cross it", cluster, span, r.last-r.first+1, x)
				if !slices.Contains(v.rep.Notes, note) {
					v.rep.Notes = append(v.rep.Notes, note)
				}
				// A snapshot whose own start..stop falls in it is still
				// broken.
			}
			for _, s := range from {
				start := pg.LSN(s.StartLSN).Segment(segSize)
				stop := pg.LSN(s.StopLSN).PrevSegment(segSize)
				key := repo.SnapshotKey(s.Cluster, s.ID)
				switch {
				case r.last < start:
					continue
				case r.first <= stop:
					continue // below: the snapshot's own range
				case expired.Covers(r.tli, r.first, r.last):
					continue
				default:
					v.problem("wal", walKey(cluster, firstName), fmt.Sprintf("%s missing (%d segment(s)) on the way from the snapshot to the archive head %s of timeline %d: recovery stops before it",
						span, r.last-r.first+1, l.SegmentName(x, head), x), key)
				}
			}
		}
	}
	// Every snapshot's own WAL, start to stop: what it needs to become
	// consistent at all.
	for _, s := range snaps {
		start := pg.LSN(s.StartLSN).Segment(segSize)
		stop := pg.LSN(s.StopLSN).PrevSegment(segSize)
		h, ok := hists[pg.TimelineID(s.StopTimeline)]
		if !ok {
			continue
		}
		if m := l.Missing(h, pg.LSN(s.StartLSN), pg.LSN(s.StopLSN)); len(m) > 0 {
			v.problem("wal", walKey(cluster, m[0]), fmt.Sprintf("missing: the snapshot cannot become consistent (it needs %d segment(s) from %s to %s, %d missing)",
				stop-start+1, l.SegmentName(h.SegmentTimeline(start, segSize), start), l.SegmentName(h.SegmentTimeline(stop, segSize), stop), len(m)), repo.SnapshotKey(s.Cluster, s.ID))
		}
	}
	headText := "nothing archived"
	if tli, seg, ok := l.Head(); ok {
		headText = "head " + l.SegmentName(tli, seg)
	}
	v.checked("WAL of cluster %d: %d segments listed on timeline(s) %s (%s); from each of its %d snapshot(s), every segment from its start to the newest archived segment of every timeline it leads to is present (segments removed by tidemark expire reported as such); %d history file(s) (%s) decrypt, authenticate, parse and agree with each other and with the timelines archived",
		cluster, segs, strings.Join(tlNames, ", "), headText, len(snaps), len(names), strings.Join(names, " "))
	return nil
}

// missingRuns returns the runs of segments from..to that recovery along h
// needs and the listing lacks.
func missingRuns(l *walarchive.Listing, h pg.History, from, to pg.SegNo, segSize uint32) []segRun {
	var out []segRun
	if from > to {
		return nil
	}
	for _, name := range l.Missing(h, from.Start(segSize), (to + 1).Start(segSize)) {
		f, err := pg.ParseWALFileName(name)
		if err != nil {
			continue
		}
		seg, err := f.SegNo(segSize)
		if err != nil {
			continue
		}
		if n := len(out); n > 0 && out[n-1].tli == f.Timeline && out[n-1].last+1 == seg {
			out[n-1].last = seg
			continue
		}
		out = append(out, segRun{tli: f.Timeline, first: seg, last: seg})
	}
	return out
}

func historyKey(cluster uint64, tli pg.TimelineID) string {
	k, _ := walarchive.Key(cluster, pg.HistoryFileName(tli))
	return k
}

func walKey(cluster uint64, name string) string {
	k, err := walarchive.Key(cluster, name)
	if err != nil {
		return name
	}
	return k
}
