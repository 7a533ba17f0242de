package restore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// walLister is what ArchiveOf uses of the repository's WAL archive
// (*walarchive.Archive).
type walLister interface {
	ListFrom(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) (*walarchive.Listing, error)
	ListDir(ctx context.Context, cluster uint64, dir string) ([]walarchive.DirEntry, error)
	History(ctx context.Context, cluster uint64, tli pg.TimelineID) (pg.History, error)
	ReadFile(ctx context.Context, cluster uint64, name string) ([]byte, walarchive.Meta, error)
	ReadChain(ctx context.Context, cluster uint64, chain []walarchive.Piece, w io.Writer) (int64, error)
}

// ArchiveOf adapts the repository's WAL archive to what a restore asks. It
// lists the history directory, and each timeline only from the first
// segment the restore asks about on (the backup's start): an archive that
// keeps weeks of WAL before the backup costs the restore nothing to list.
// A timeline's listing is kept and reused for any segment at or after
// where it starts.
func ArchiveOf(a walLister) Archive {
	return &walArchive{a: a, listings: map[timelineKey]timelineListing{}}
}

type timelineKey struct {
	cluster uint64
	tli     pg.TimelineID
}

// timelineListing is a timeline's listing and the segment it starts at.
type timelineListing struct {
	l    *walarchive.Listing
	from pg.SegNo
}

type walArchive struct {
	a        walLister
	mu       sync.Mutex
	listings map[timelineKey]timelineListing
}

// listing returns a listing of timeline tli that holds every segment from
// from on, listing again when the one kept starts later.
func (w *walArchive) listing(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) (*walarchive.Listing, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := timelineKey{cluster, tli}
	if tl, ok := w.listings[k]; ok && tl.from <= from {
		return tl.l, nil
	}
	l, err := w.a.ListFrom(ctx, cluster, tli, from)
	if err != nil {
		return nil, fmt.Errorf("list the WAL archive of cluster %d, timeline %d: %w", cluster, tli, err)
	}
	w.listings[k] = timelineListing{l, from}
	return l, nil
}

// Histories reads the history file of every timeline in the archive's
// history directory (one short LIST).
func (w *walArchive) Histories(ctx context.Context, cluster uint64) ([]pg.History, error) {
	ents, err := w.a.ListDir(ctx, cluster, walarchive.HistoryDir)
	if err != nil {
		return nil, fmt.Errorf("list the timeline history files of cluster %d: %w", cluster, err)
	}
	var hs []pg.History
	for _, e := range ents {
		f, err := pg.ParseWALFileName(e.Name)
		if err != nil || f.Kind != pg.WALTimelineHistory || f.Timeline <= 1 {
			continue
		}
		h, err := w.a.History(ctx, cluster, f.Timeline)
		if err != nil {
			return nil, fmt.Errorf("history of timeline %d: %w", f.Timeline, err)
		}
		hs = append(hs, h)
	}
	return hs, nil
}

func (w *walArchive) Segments(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) ([]pg.SegNo, error) {
	l, err := w.listing(ctx, cluster, tli, from)
	if err != nil {
		return nil, err
	}
	t := l.Timeline(tli)
	if t == nil {
		return nil, nil
	}
	var out []pg.SegNo
	for _, r := range t.Segments {
		for s := max(r.First, from); s <= r.Last && r.Last >= from; s++ {
			out = append(out, s)
		}
	}
	// A segment wal-receive stored whole in pieces but did not archive
	// whole yet is a segment: wal-fetch serves it.
	for _, st := range t.Streams {
		if st.Complete && st.Seg >= from && !t.Has(st.Seg) {
			out = append(out, st.Seg)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Tail returns the bytes of wal-receive's tail of timeline tli when it is
// segment seg (walarchive.TimelineInfo.Tail): the WAL acknowledged past
// the timeline's last complete segment, which wal-fetch serves.
func (w *walArchive) Tail(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo) ([]byte, bool, error) {
	l, err := w.listing(ctx, cluster, tli, seg)
	if err != nil {
		return nil, false, err
	}
	t := l.Timeline(tli)
	if t == nil {
		return nil, false, nil
	}
	st, ok := t.Tail()
	if !ok || st.Seg != seg {
		return nil, false, nil
	}
	chain, _ := walarchive.Chain(st.Pieces)
	var b bytes.Buffer
	if _, err := w.a.ReadChain(ctx, cluster, chain, &b); err != nil {
		return nil, false, err
	}
	return b.Bytes(), true, nil
}

func (w *walArchive) ReadSegment(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo) ([]byte, error) {
	l, err := w.listing(ctx, cluster, tli, seg)
	if err != nil {
		return nil, err
	}
	name := l.SegmentName(tli, seg)
	if t := l.Timeline(tli); t != nil && !t.Has(seg) {
		if st, ok := t.Stream(seg); ok && st.Complete {
			chain, _ := walarchive.Chain(st.Pieces)
			var b bytes.Buffer
			_, err := w.a.ReadChain(ctx, cluster, chain, &b)
			return b.Bytes(), err
		}
	}
	b, _, err := w.a.ReadFile(ctx, cluster, name)
	return b, err
}
