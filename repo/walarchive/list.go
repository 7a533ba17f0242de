package walarchive

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
)

// SegRange is a run of consecutive segments, First to Last inclusive.
type SegRange struct {
	First, Last pg.SegNo
}

// Count returns the number of segments in the range.
func (r SegRange) Count() uint64 { return uint64(r.Last-r.First) + 1 }

// TimelineInfo is what the archive holds of one timeline.
type TimelineInfo struct {
	Timeline pg.TimelineID
	// Segments are the archived complete segments as ascending, disjoint,
	// non-adjacent runs: the holes between two runs are the gaps.
	Segments []SegRange
	Partial  []string // .partial files
	Backup   []string // .backup files
	// History is set when the timeline's history file is archived
	// (timeline 1 has none).
	History bool
	// Streams are the segments of this timeline of which wal-receive
	// stored pieces (Piece), ascending: the segment being written now,
	// one completed but whose pieces are not deleted yet, and the end of
	// a timeline that never completed its last segment.
	Streams []Stream
	// Parent and Begin are where the timeline branched off (from its
	// history file, filled in by Archive.Forks): Parent ended at Begin,
	// where this timeline's WAL starts. Zero for timeline 1, or when not
	// loaded.
	Parent pg.TimelineID
	Begin  pg.LSN
	// Summaries are the segments with a block summary, as runs.
	Summaries []SegRange
}

// Stream is what the archive holds of one segment in pieces.
type Stream struct {
	Seg  pg.SegNo
	Name string // the segment's file name
	// Pieces are the segment's pieces as listed; End is how far the chain
	// of them from byte 0 reaches (Chain), Complete that it reaches the
	// end of the segment.
	Pieces   []Piece
	End      int64
	Complete bool
}

// EndLSN is the LSN just past the last byte the chain holds.
func (s Stream) EndLSN(segSize uint32) pg.LSN { return s.Seg.Start(segSize) + pg.LSN(s.End) }

// Stream returns the stream of segment seg, if pieces of it are archived.
func (t *TimelineInfo) Stream(seg pg.SegNo) (Stream, bool) {
	for _, s := range t.Streams {
		if s.Seg == seg {
			return s, true
		}
	}
	return Stream{}, false
}

// Tail returns the stream that ends the timeline: pieces of a segment after
// every complete segment of the timeline, whose chain does not reach the
// segment's end (a complete chain is as good as the segment and is not a
// tail). ok is false when the timeline ends with a complete segment.
func (t *TimelineInfo) Tail() (Stream, bool) {
	if len(t.Streams) == 0 {
		return Stream{}, false
	}
	s := t.Streams[len(t.Streams)-1]
	if s.Complete || s.End == 0 {
		return Stream{}, false
	}
	if n := len(t.Segments); n > 0 && t.Segments[n-1].Last >= s.Seg {
		return Stream{}, false
	}
	for _, o := range t.Streams[:len(t.Streams)-1] {
		if o.Seg > s.Seg {
			return Stream{}, false
		}
	}
	return s, true
}

func (t *TimelineInfo) addPiece(seg pg.SegNo, p Piece) {
	n := len(t.Streams)
	if n == 0 || t.Streams[n-1].Seg != seg {
		t.Streams = append(t.Streams, Stream{Seg: seg, Name: p.Segment})
		n++
	}
	t.Streams[n-1].Pieces = append(t.Streams[n-1].Pieces, p)
}

// settle computes each stream's chain once the listing is complete.
func (t *TimelineInfo) settle(segSize uint32) {
	for i := range t.Streams {
		s := &t.Streams[i]
		_, s.End = Chain(s.Pieces)
		s.Complete = s.End == int64(segSize)
	}
}

// HasSummary reports whether segment seg has a block summary.
func (t *TimelineInfo) HasSummary(seg pg.SegNo) bool { return hasSeg(t.Summaries, seg) }

// Count returns the number of archived complete segments.
func (t *TimelineInfo) Count() uint64 {
	var n uint64
	for _, r := range t.Segments {
		n += r.Count()
	}
	return n
}

// Has reports whether segment seg is archived.
func (t *TimelineInfo) Has(seg pg.SegNo) bool { return hasSeg(t.Segments, seg) }

func hasSeg(runs []SegRange, seg pg.SegNo) bool {
	_, found := slices.BinarySearchFunc(runs, seg, func(r SegRange, s pg.SegNo) int {
		switch {
		case r.Last < s:
			return -1
		case r.First > s:
			return 1
		}
		return 0
	})
	return found
}

// Gaps returns the missing runs between the first and the last archived
// segment.
func (t *TimelineInfo) Gaps() []SegRange {
	var gaps []SegRange
	for i := 1; i < len(t.Segments); i++ {
		gaps = append(gaps, SegRange{t.Segments[i-1].Last + 1, t.Segments[i].First - 1})
	}
	return gaps
}

func (t *TimelineInfo) add(seg pg.SegNo) { t.Segments = addSeg(t.Segments, seg) }

// addSeg adds seg to runs; listings come in key order, so it is the last
// run's neighbour or after it, but for a summary listed before its own
// segment's successors.
func addSeg(runs []SegRange, seg pg.SegNo) []SegRange {
	if n := len(runs); n > 0 && runs[n-1].Last+1 == seg {
		runs[n-1].Last = seg
		return runs
	}
	return append(runs, SegRange{seg, seg})
}

// Listing is what the archive holds of one cluster.
type Listing struct {
	Cluster   ClusterInfo
	Timelines []*TimelineInfo // ascending by timeline
	// Foreign are keys under the cluster's prefix that are no archived WAL
	// file in its right place (a stray upload, a copy under a wrong name).
	Foreign []string
}

// Timeline returns the timeline's entry, or nil.
func (l *Listing) Timeline(tli pg.TimelineID) *TimelineInfo {
	for _, t := range l.Timelines {
		if t.Timeline == tli {
			return t
		}
	}
	return nil
}

func (l *Listing) timeline(tli pg.TimelineID) *TimelineInfo {
	if t := l.Timeline(tli); t != nil {
		return t
	}
	t := &TimelineInfo{Timeline: tli}
	l.Timelines = append(l.Timelines, t)
	slices.SortFunc(l.Timelines, func(a, b *TimelineInfo) int { return int(a.Timeline) - int(b.Timeline) })
	return t
}

// Head returns the newest archived segment: the last one of the highest
// timeline that has any.
func (l *Listing) Head() (tli pg.TimelineID, seg pg.SegNo, ok bool) {
	for i := len(l.Timelines) - 1; i >= 0; i-- {
		t := l.Timelines[i]
		if n := len(t.Segments); n > 0 {
			return t.Timeline, t.Segments[n-1].Last, true
		}
	}
	return 0, 0, false
}

// SegmentName returns the file name of segment seg on timeline tli in this
// cluster.
func (l *Listing) SegmentName(tli pg.TimelineID, seg pg.SegNo) string {
	return pg.SegmentName(tli, seg, l.Cluster.SegSize)
}

// MissingHistory returns the timelines above 1 that have archived WAL but no
// archived history file: recovery cannot follow them to their parent.
func (l *Listing) MissingHistory() []pg.TimelineID {
	var out []pg.TimelineID
	for _, t := range l.Timelines {
		if t.Timeline > 1 && !t.History && (len(t.Segments) > 0 || len(t.Partial) > 0 || len(t.Backup) > 0 || len(t.Streams) > 0) {
			out = append(out, t.Timeline)
		}
	}
	return out
}

// has reports whether segment seg of timeline tli is archived.
func (l *Listing) has(tli pg.TimelineID, seg pg.SegNo) bool {
	t := l.Timeline(tli)
	return t != nil && t.Has(seg)
}

// Missing returns the names of the segments that recovery along history h
// needs to replay the WAL from start up to stop (every segment holding a
// byte of [start, stop)) and that the listing lacks. Segments are looked for
// on the timeline recovery reads them from (pg.History.SegmentTimeline).
func (l *Listing) Missing(h pg.History, start, stop pg.LSN) []string {
	var out []string
	forRange(h, l.Cluster.SegSize, start, stop, func(tli pg.TimelineID, seg pg.SegNo) {
		if !l.has(tli, seg) {
			out = append(out, l.SegmentName(tli, seg))
		}
	})
	return out
}

// Reach returns the last segment up to which the WAL is continuous from
// segment from along history h: recovery that starts in from can replay up
// to the end of last. ok is false when from itself is missing.
func (l *Listing) Reach(h pg.History, from pg.SegNo) (last pg.SegNo, ok bool) {
	seg := from
	for l.has(h.SegmentTimeline(seg, l.Cluster.SegSize), seg) {
		last, ok = seg, true
		seg++
	}
	return last, ok
}

// forRange calls fn for each segment holding a byte of [start, stop), with
// the timeline recovery along h reads it from.
func forRange(h pg.History, segSize uint32, start, stop pg.LSN, fn func(pg.TimelineID, pg.SegNo)) {
	if stop <= start {
		return
	}
	for seg := start.Segment(segSize); seg <= stop.PrevSegment(segSize); seg++ {
		fn(h.SegmentTimeline(seg, segSize), seg)
	}
}

// DirEntry is one object of a listed archive directory.
type DirEntry struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// ListDir lists one directory of a cluster's archive: a log directory
// (TTTTTTTTXXXXXXXX, see DirKey) or HistoryDir. It is one LIST request for
// up to 1000 objects: what a restore asks before it fetches, so that a file
// that is not there costs no GET.
func (a *Archive) ListDir(ctx context.Context, cluster uint64, dir string) ([]DirEntry, error) {
	prefix := ClusterPrefix(cluster) + dir + "/"
	var out []DirEntry
	for oi, err := range a.store.List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		name := strings.TrimPrefix(oi.Key, prefix)
		_, _, summary, isFile := parseKey(oi.Key)
		_, _, isPiece := parsePieceKey(oi.Key)
		if (!isFile || summary) && !isPiece {
			continue
		}
		out = append(out, DirEntry{Name: name, Size: oi.Size, ModTime: oi.ModTime})
	}
	return out, nil
}

// List lists everything archived for cluster. It pages through every key of
// the cluster (one LIST per 1000 objects) and keeps only runs, so memory
// grows with the number of gaps, not of segments. A cluster with nothing
// archived is an empty Listing with a zero Cluster.
func (a *Archive) List(ctx context.Context, cluster uint64) (*Listing, error) {
	l, _, err := a.newListing(ctx, cluster)
	if err != nil {
		return nil, err
	}
	if err := a.fill(ctx, l, ClusterPrefix(cluster), ""); err != nil {
		return nil, err
	}
	return l, nil
}

// newListing starts a Listing of cluster with its marker's settings;
// archived is false when there is no marker.
func (a *Archive) newListing(ctx context.Context, cluster uint64) (l *Listing, archived bool, err error) {
	l = &Listing{Cluster: ClusterInfo{SystemID: cluster}}
	ci, err := a.Cluster(ctx, cluster)
	switch {
	case err == nil:
		l.Cluster = ci
		return l, true, nil
	case errors.Is(err, ErrNotArchived):
		return l, false, nil
	default:
		return nil, false, err
	}
}

// fill adds to l the keys under prefix after after.
func (a *Archive) fill(ctx context.Context, l *Listing, prefix, after string) error {
	for oi, err := range a.store.List(ctx, prefix, after) {
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := l.add(l.Cluster.SystemID, oi.Key); err != nil {
			return err
		}
	}
	for _, t := range l.Timelines {
		t.settle(l.Cluster.SegSize)
	}
	return nil
}

// ListFrom lists what the archive holds of timeline tli of cluster from
// segment from on: a Listing of that one timeline, whose earlier segments
// it never reads. One LIST that starts after them (keys come in timeline,
// then segment order), so what it costs grows with the WAL from there on,
// not with all the WAL kept: a restore of last night's backup from an
// archive of a week of a terabyte a day lists a night's WAL, not a million
// objects.
func (a *Archive) ListFrom(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) (*Listing, error) {
	l, archived, err := a.newListing(ctx, cluster)
	if err != nil || !archived {
		return l, err
	}
	dir := pg.SegmentName(tli, from, l.Cluster.SegSize)[:16]
	// Every key of the timeline starts with the timeline's 8 digits; its
	// keys before dir's are in earlier directories, and dir itself (no
	// "/") sorts before every key in it. Within dir, the keys of a segment
	// are its name and suffixes that start with "."; the name of the
	// segment before from and "~" sorts after all of them and before from's
	// name (names are hex digits of one length).
	after := ClusterPrefix(cluster) + dir
	if from > 0 {
		if prev := pg.SegmentName(tli, from-1, l.Cluster.SegSize); prev[:16] == dir {
			after = ClusterPrefix(cluster) + dir + "/" + prev + "~"
		}
	}
	if err := a.fill(ctx, l, ClusterPrefix(cluster)+dir[:8], after); err != nil {
		return nil, err
	}
	return l, nil
}

// add puts one listed key of cluster into l.
func (l *Listing) add(cluster uint64, key string) error {
	if key == MarkerKey(cluster) {
		return nil
	}
	if _, p, ok := parsePieceKey(key); ok {
		f, _ := pg.ParseWALFileName(p.Segment)
		seg, err := f.SegNo(l.Cluster.SegSize)
		if l.Cluster.SegSize == 0 || err != nil || p.End > int64(l.Cluster.SegSize) {
			l.Foreign = append(l.Foreign, key)
			return nil
		}
		l.timeline(f.Timeline).addPiece(seg, p)
		return nil
	}
	_, f, summary, ok := parseKey(key)
	if !ok {
		l.Foreign = append(l.Foreign, key)
		return nil
	}
	if l.Cluster.SegSize == 0 {
		return corruptf(MarkerKey(cluster), "missing, but %s is archived: the cluster's segment size is unknown", key)
	}
	t := l.timeline(f.Timeline)
	if summary {
		if seg, err := f.SegNo(l.Cluster.SegSize); err == nil {
			t.Summaries = addSeg(t.Summaries, seg)
		}
		return nil
	}
	switch f.Kind {
	case pg.WALSegment:
		seg, err := f.SegNo(l.Cluster.SegSize)
		if err != nil {
			l.Foreign = append(l.Foreign, key)
			return nil
		}
		t.add(seg)
	case pg.WALPartialSegment:
		t.Partial = append(t.Partial, f.Name())
	case pg.WALBackupHistory:
		t.Backup = append(t.Backup, f.Name())
	case pg.WALTimelineHistory:
		t.History = true
	}
	return nil
}

// Clusters lists the system identifiers that have WAL in the archive. It
// skips from one cluster to the next with StartAfter, so it costs one LIST
// per cluster.
func (a *Archive) Clusters(ctx context.Context) ([]uint64, error) {
	var out []uint64
	after := ""
	for {
		var next string
		for oi, err := range a.store.List(ctx, Prefix, after) {
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", Prefix, err)
			}
			next = oi.Key
			break
		}
		if next == "" {
			return out, nil
		}
		c, ok := ParseCluster(next)
		if !ok {
			// A stray key right under wal/: skip past it.
			after = next
			continue
		}
		out = append(out, c)
		// "0" sorts after "/": everything of this cluster is before it.
		after = strings.TrimSuffix(ClusterPrefix(c), "/") + "0"
	}
}

// CheckRange returns the names of the segments that recovery along history
// h needs to replay [start, stop) and that are not archived (nil when all
// are). It lists only the directories those segments live in, one LIST each.
func (a *Archive) CheckRange(ctx context.Context, cluster uint64, h pg.History, start, stop pg.LSN) ([]string, error) {
	ci, err := a.Cluster(ctx, cluster)
	if err != nil {
		return nil, err
	}
	dirs := map[string]map[string]bool{}
	var missing []string
	var ferr error
	forRange(h, ci.SegSize, start, stop, func(tli pg.TimelineID, seg pg.SegNo) {
		if ferr != nil {
			return
		}
		name := pg.SegmentName(tli, seg, ci.SegSize)
		dir := name[:16]
		names, ok := dirs[dir]
		if !ok {
			ents, err := a.ListDir(ctx, cluster, dir)
			if err != nil {
				ferr = err
				return
			}
			names = map[string]bool{}
			for _, e := range ents {
				names[e.Name] = true
			}
			dirs[dir] = names
		}
		if !names[name] {
			missing = append(missing, name)
		}
	})
	return missing, ferr
}

// History reads and parses the history file of timeline tli. Timeline 1
// has none and an empty history.
func (a *Archive) History(ctx context.Context, cluster uint64, tli pg.TimelineID) (pg.History, error) {
	if tli <= 1 {
		return pg.History{Timeline: 1}, nil
	}
	name := pg.HistoryFileName(tli)
	b, _, err := a.ReadFile(ctx, cluster, name)
	if err != nil {
		return pg.History{}, err
	}
	// Not a CorruptError: the object passed its MAC, so these are the bytes
	// PostgreSQL wrote, and pg.ParseHistory is stricter than PostgreSQL
	// (see checkHistory).
	h, err := pg.ParseHistory(tli, b)
	if err != nil {
		return pg.History{}, fmt.Errorf("timeline history %s of cluster %d: %w", name, cluster, err)
	}
	return h, nil
}

// Forks fills in Parent and Begin of every timeline of l whose history file
// is archived (one GET each): where it branched off its parent, which
// wal list shows as the fork point.
func (a *Archive) Forks(ctx context.Context, l *Listing) error {
	for _, t := range l.Timelines {
		if t.Timeline <= 1 || !t.History {
			continue
		}
		h, err := a.History(ctx, l.Cluster.SystemID, t.Timeline)
		if errors.Is(err, pg.ErrInvalidHistory) {
			// PostgreSQL writes histories whose switch points go
			// backwards (a timeline ID skipped because a later one was
			// archived): the listing shows no fork point for it rather
			// than fail; verify reports what is wrong with it.
			continue
		}
		if err != nil {
			return err
		}
		if n := len(h.Entries); n > 0 {
			t.Parent, t.Begin = h.Entries[n-1].Parent, h.Entries[n-1].SwitchPoint
		}
	}
	return nil
}
