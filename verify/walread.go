package verify

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// clusterWAL is what checkWAL found of one cluster's archive: what readWAL
// needs to say whose recovery a damaged object breaks.
type clusterWAL struct {
	l       *walarchive.Listing
	snaps   []*repo.Snapshot
	expired walarchive.Ranges
	hists   map[pg.TimelineID]pg.History
}

// WALShare is what one run read of the WAL archive: every object whose key
// lies in [First, Last], in key order. A rotating share (--read-data-subset)
// continues after the last key the previous run read; a cycle ends when the
// listing does, and the next starts again at the first key, so that ceil(1/N)
// runs of share N read every object that existed when the cycle began.
type WALShare struct {
	Cycle        int       `json:"cycle,omitempty"`
	First        string    `json:"first,omitempty"`
	Last         string    `json:"last,omitempty"`
	Objects      int64     `json:"objects"`
	Total        int64     `json:"total"` // objects the listings counted
	CycleStarted time.Time `json:"cycle_started,omitzero"`
	// CycleComplete says this run reached the end of the archive: every
	// object that existed when the cycle began has been read since.
	CycleComplete bool `json:"cycle_complete"`
}

// walObject is one archived file to read. For a block summary or a piece
// of a segment, f is that segment.
type walObject struct {
	key     string
	cluster uint64
	f       pg.WALFile
	summary bool
	piece   *walarchive.Piece
}

// walFailure is an object that failed its reading.
type walFailure struct {
	o    walObject
	err  error
	gone bool // vanished between the listing and the GET
}

// readWAL reads every segment, .partial and .backup file, block summary
// and wal-receive piece of the archive in key order, or, with st, the next share of them, Parallel at a time. It
// returns whether a rotation cycle ended. History files are not read again:
// checkWAL read, authenticated and parsed each one.
func (v *run) readWAL(ctx context.Context, st *state) (cycleDone bool, _ error) {
	var total int64
	for _, cw := range v.wal {
		for _, t := range cw.l.Timelines {
			total += int64(t.Count()) + int64(len(t.Partial)) + int64(len(t.Backup))
			for _, r := range t.Summaries {
				total += int64(r.Count())
			}
			for _, st := range t.Streams {
				total += int64(len(st.Pieces))
			}
		}
	}
	// Everything listed, however many objects arrived since checkWAL
	// counted them (a count would then stop short in a later cluster).
	want := int64(math.MaxInt64)
	after := ""
	share := &WALShare{Total: total}
	if st != nil {
		want = max(1, int64(math.Ceil(v.o.Subset*float64(total))))
		after = st.WALAfter
		share.Cycle, share.CycleStarted = st.WALCycle, st.WALCycleStarted
	}
	v.rep.WAL = share
	began := time.Now()

	work := make(chan walObject)
	var mu sync.Mutex
	var failed []walFailure
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for range v.o.Parallel {
		wg.Go(func() {
			for o := range work {
				f, err := v.readWALObject(ctx, o)
				if err != nil {
					cancel(err)
					continue
				}
				if f != nil {
					mu.Lock()
					failed = append(failed, *f)
					mu.Unlock()
				}
			}
		})
	}
	var dispatched int64
	ended := true // the listing ran out before want objects
	listed := int64(0)
	var listErr error
list:
	for oi, err := range v.r.Store().List(ctx, walarchive.Prefix, after) {
		if err != nil {
			listErr = fmt.Errorf("list %s: %w", walarchive.Prefix, err)
			break
		}
		listed++
		o, ok := v.walObjectOf(oi.Key)
		if !ok {
			continue
		}
		if dispatched == want {
			ended = false
			break
		}
		select {
		case work <- o:
		case <-ctx.Done():
			break list
		}
		dispatched++
		if share.First == "" {
			share.First = o.key
		}
		share.Last = o.key
	}
	close(work)
	wg.Wait()
	v.rep.Stats.WALReadSeconds = time.Since(began).Seconds()
	// A LIST returns up to 1000 keys.
	v.rep.Stats.WALRequests += (listed + 999) / 1000
	if err := context.Cause(ctx); err != nil {
		return false, fmt.Errorf("read the WAL archive: %w", err)
	}
	if listErr != nil {
		return false, listErr
	}
	share.Objects = dispatched
	share.CycleComplete = ended
	if st != nil && share.Last != "" {
		st.WALAfter = share.Last
	}
	if err := v.reportWAL(ctx, failed); err != nil {
		return false, err
	}
	what := fmt.Sprintf("all %d objects of the WAL archive", dispatched)
	if st != nil {
		what = fmt.Sprintf("%d of its %d objects, from %s to %s in key order (cycle %d of the rotation in %s%s)", dispatched, total,
			cmp.Or(share.First, "-"), cmp.Or(share.Last, "-"), share.Cycle, StateKey, map[bool]string{true: ", which this run completed"}[ended])
	}
	s := v.rep.Stats
	v.checked("WAL contents: %s downloaded (%s stored, %s of WAL, %d GET and LIST requests): each decrypts (age authenticates every chunk), holds the record of the file its key names (name, kind, system identifier), decompresses to the size the record says and matches the record's MAC (BLAKE3 keyed with the repository's WAL key); each segment has the cluster's segment size and every one of its %d page headers is the one its name, timeline and the cluster's system identifier call for (magic, address, timeline, and only zero pages after a WAL switch); .backup files parse as backup labels; block summaries authenticate and describe the segment their key names; wal-receive's pieces authenticate and hold the bytes their names say",
		what, bytesize.Format(s.WALStoredRead), bytesize.Format(s.WALBytesRead), s.WALRequests, s.WALPagesChecked)
	return ended, nil
}

// walObjectOf returns the object a listed key holds, if it is a segment,
// .partial or .backup file, a segment's block summary or a piece of a
// segment in its place of a cluster checkWAL listed.
func (v *run) walObjectOf(key string) (walObject, bool) {
	cluster, ok := walarchive.ParseCluster(key)
	if !ok || v.wal[cluster] == nil || v.wal[cluster].l.Cluster.SegSize == 0 {
		return walObject{}, false
	}
	segSize := v.wal[cluster].l.Cluster.SegSize
	name := key[strings.LastIndexByte(key, '/')+1:]
	if seg, ok := strings.CutSuffix(name, walarchive.SummarySuffix); ok {
		f, err := pg.ParseWALFileName(seg)
		if err != nil || f.Kind != pg.WALSegment {
			return walObject{}, false
		}
		no, err := f.SegNo(segSize)
		if err != nil || walarchive.SummaryKey(cluster, f.Timeline, no, segSize) != key {
			return walObject{}, false
		}
		return walObject{key: key, cluster: cluster, f: f, summary: true}, true
	}
	if p, ok := walarchive.ParsePieceName(name); ok {
		f, err := pg.ParseWALFileName(p.Segment)
		if err != nil || f.Kind != pg.WALSegment || walarchive.PieceKey(cluster, p) != key {
			return walObject{}, false
		}
		return walObject{key: key, cluster: cluster, f: f, piece: &p}, true
	}
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return walObject{}, false // the marker, or a stray key (checkWAL noted it)
	}
	switch f.Kind {
	case pg.WALSegment, pg.WALPartialSegment, pg.WALBackupHistory:
	default:
		return walObject{}, false
	}
	if k, err := walarchive.Key(cluster, name); err != nil || k != key {
		return walObject{}, false
	}
	return walObject{key: key, cluster: cluster, f: f}, true
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// readWALObject reads and checks one object. It returns the failure, or an
// error when the reading itself failed (the store, the context): that
// proves nothing either way and ends the run.
func (v *run) readWALObject(ctx context.Context, o walObject) (*walFailure, error) {
	if o.summary || o.piece != nil {
		return v.readWALExtra(ctx, o)
	}
	ci := v.wal[o.cluster].l.Cluster
	name := o.f.Name()
	var check interface {
		io.Writer
		Close() error
	}
	var label *labelBuffer
	var seg *pg.WALSegmentCheck
	switch o.f.Kind {
	case pg.WALSegment, pg.WALPartialSegment:
		pageSize := ci.BlockSize
		if pageSize == 0 {
			pageSize = pg.DefaultWALBlockSize
		}
		c, err := pg.NewWALSegmentCheck(name, o.cluster, ci.SegSize, pageSize)
		if err != nil {
			return &walFailure{o: o, err: err}, nil
		}
		seg, check = c, c
	default:
		label = &labelBuffer{}
	}
	rc, err := v.r.Store().Get(ctx, o.key)
	v.count(func(s *Stats) { s.WALRequests++ })
	if errors.Is(err, storage.ErrNotFound) {
		return &walFailure{o: o, gone: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", o.key, err)
	}
	defer rc.Close()
	body := &countingReader{r: rc}
	var w io.Writer = label
	if check != nil {
		w = check
	}
	m, err := v.a.Decode(ctx, o.key, body, name, o.cluster, w)
	v.count(func(s *Stats) {
		s.WALObjectsRead++
		s.WALStoredRead += body.n
		s.WALBytesRead += max(m.Size, 0)
		if seg != nil {
			s.WALPagesChecked += seg.Pages()
		}
	})
	switch {
	case errors.Is(err, repo.ErrCorrupt):
		return &walFailure{o: o, err: err}, nil
	case err != nil:
		return nil, err
	}
	if check != nil {
		if err := check.Close(); err != nil {
			return &walFailure{o: o, err: err}, nil
		}
		return nil, nil
	}
	if label.over {
		return &walFailure{o: o, err: errors.New("larger than any backup label")}, nil
	}
	if _, err := pg.ParseBackupLabel(label.Bytes()); err != nil {
		return &walFailure{o: o, err: fmt.Errorf("not a backup label: %w", err)}, nil
	}
	return nil, nil
}

// readWALExtra reads a block summary (authenticated, decoded, and about
// the segment its key names) or a piece of a segment (authenticated, of
// the size its name says). Their bytes are not WAL: they count as objects
// and stored bytes, not as bytes of WAL.
func (v *run) readWALExtra(ctx context.Context, o walObject) (*walFailure, error) {
	body := &countingWriter{}
	var err error
	if o.summary {
		segSize := v.wal[o.cluster].l.Cluster.SegSize
		no, _ := o.f.SegNo(segSize) // walObjectOf parsed it
		_, err = v.a.ReadSummary(ctx, o.cluster, o.f.Timeline, no, segSize)
	} else {
		_, err = v.a.GetPiece(ctx, o.cluster, *o.piece, body)
	}
	v.count(func(s *Stats) {
		s.WALRequests++
		s.WALObjectsRead++
	})
	var na *walarchive.NotArchivedError
	switch {
	case errors.As(err, &na):
		return &walFailure{o: o, gone: true}, nil
	case errors.Is(err, repo.ErrCorrupt):
		return &walFailure{o: o, err: err}, nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", o.key, err)
	}
	return nil, nil
}

// countingWriter counts and drops what is written to it.
type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func (v *run) count(f func(*Stats)) {
	v.mu.Lock()
	f(&v.rep.Stats)
	v.mu.Unlock()
}

// labelBuffer keeps a backup history file, which is a few hundred bytes:
// one that claims more is kept only to its first MiB and fails to parse.
type labelBuffer struct {
	bytes.Buffer
	over bool
}

func (l *labelBuffer) Write(p []byte) (int, error) {
	if l.over || l.Len()+len(p) > 1<<20 {
		l.over = true
		return len(p), nil
	}
	return l.Buffer.Write(p)
}

// reportWAL turns failed objects into problems naming the snapshots and the
// recovery targets they take away. An object that vanished while verify
// ran and that tidemark expire has since recorded as removed on purpose is
// a note.
func (v *run) reportWAL(ctx context.Context, failed []walFailure) error {
	slices.SortFunc(failed, func(a, b walFailure) int { return strings.Compare(a.o.key, b.o.key) })
	expired := map[uint64]walarchive.Ranges{}
	for _, f := range failed {
		cw := v.wal[f.o.cluster]
		msg := ""
		if f.gone {
			ex, ok := expired[f.o.cluster]
			if !ok {
				var err error
				if ex, err = v.a.Expired(ctx, f.o.cluster); err != nil {
					ex = walarchive.Ranges{}
				}
				expired[f.o.cluster] = ex
			}
			if seg, err := f.o.f.SegNo(cw.l.Cluster.SegSize); err == nil && ex.Has(f.o.f.Timeline, seg) {
				v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s was removed by tidemark expire while verify ran", f.o.key))
				continue
			}
			if f.o.f.Kind != pg.WALSegment || f.o.summary || f.o.piece != nil {
				// A summary goes with its segment; wal-receive deletes
				// pieces once the whole segment is archived.
				v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s vanished while verify ran", f.o.key))
				continue
			}
			msg = "vanished while verify ran, and tidemark expire did not remove it"
		} else {
			msg = "fails its check: " + errText(f.err)
		}
		switch {
		case f.o.summary:
			v.problem("wal-data", f.o.key, msg+fmt.Sprintf(" (the block summary of %s: incremental backups over it fall back to reading every changed file, and recovery does not need it); to repair: delete it", f.o.f.Name()), "")
			continue
		case f.o.piece != nil:
			v.problem("wal-data", f.o.key, msg+fmt.Sprintf(" (bytes %d to %d of %s streamed by wal-receive: recovery past the last complete segment of timeline %d loses them unless a complete %s is archived); to repair: restore the object from a copy of the bucket, or archive %s from pg_wal if PostgreSQL still has it (tidemark wal-push)",
				f.o.piece.Start, f.o.piece.End, f.o.f.Name(), f.o.f.Timeline, f.o.f.Name(), f.o.f.Name()), "")
			continue
		}
		switch f.o.f.Kind {
		case pg.WALPartialSegment:
			v.problem("wal-data", f.o.key, msg+" (a .partial segment: recovery uses it only when asked to)", "")
			continue
		case pg.WALBackupHistory:
			v.problem("wal-data", f.o.key, msg+" (a backup history file: recovery does not need it)", "")
			continue
		}
		broken, lost, consistent := v.walImpact(ctx, cw, f.o)
		var parts []string
		if len(consistent) > 0 {
			parts = append(parts, fmt.Sprintf("%d snapshot(s) cannot become consistent", len(consistent)))
		}
		if len(lost) > 0 {
			var rs []string
			for _, r := range lost {
				rs = append(rs, r.String())
			}
			parts = append(parts, "recovery to targets on "+strings.Join(rs, "; ")+" is lost")
		}
		if len(broken) == 0 {
			parts = append(parts, "no snapshot's recovery needs it")
		}
		p := v.problem("wal-data", f.o.key, msg+": "+strings.Join(parts, "; ")+
			fmt.Sprintf("; to repair: restore the object from a copy of the bucket, or delete it and archive %s again from pg_wal if PostgreSQL still has it (tidemark wal-push)", f.o.f.Name()), "")
		p.Lost = lost
		for _, k := range broken {
			v.problem(p.Kind, p.Object, p.Message, k)
		}
	}
	return nil
}

// walImpact says whose recovery the segment o breaks, along every timeline
// whose history reads it from o's timeline: the snapshots that need it
// (all of them), those among them that need it to become consistent at all,
// and the ranges of target times no snapshot reaches any more. A target
// after the segment is still reached from a snapshot that starts after it:
// the range ends at the first such snapshot's stop.
func (v *run) walImpact(ctx context.Context, cw *clusterWAL, o walObject) (broken []string, lost []LostRange, consistent []string) {
	segSize := cw.l.Cluster.SegSize
	seg, err := o.f.SegNo(segSize)
	if err != nil {
		return nil, nil, nil
	}
	tlis := make([]pg.TimelineID, 0, len(cw.hists))
	for x := range cw.hists {
		tlis = append(tlis, x)
	}
	slices.Sort(tlis)
	var fromTime time.Time
	fromBasis := ""
	fromDone := false
	for _, x := range tlis {
		h := cw.hists[x]
		if h.SegmentTimeline(seg, segSize) != o.f.Timeline {
			continue
		}
		var before []*repo.Snapshot // stop before the segment: recovery from them stops at it
		var to time.Time
		for _, s := range cw.snaps {
			if !h.CanRecoverFrom(pg.TimelineID(s.StopTimeline), pg.LSN(s.StopLSN)) {
				continue
			}
			start := pg.LSN(s.StartLSN).Segment(segSize)
			stop := pg.LSN(s.StopLSN).PrevSegment(segSize)
			key := repo.SnapshotKey(s.Cluster, s.ID)
			switch {
			case seg < start:
				if to.IsZero() || s.StopTime.Before(to) {
					to = s.StopTime
				}
			case seg <= stop:
				if !slices.Contains(consistent, key) {
					consistent = append(consistent, key)
				}
				if !slices.Contains(broken, key) {
					broken = append(broken, key)
				}
			default:
				before = append(before, s)
				if !slices.Contains(broken, key) {
					broken = append(broken, key)
				}
			}
		}
		if len(before) == 0 {
			continue
		}
		if !fromDone {
			fromDone = true
			fromTime, fromBasis = v.lastCommitBefore(ctx, cw, h, seg)
			if fromTime.IsZero() {
				for _, s := range before {
					if s.StopTime.After(fromTime) {
						fromTime, fromBasis = s.StopTime, "snapshot stop"
					}
				}
			}
		}
		lost = append(lost, LostRange{Timeline: uint32(x), From: fromTime.UTC(), To: to.UTC(), FromBasis: fromBasis})
	}
	return broken, lost, consistent
}

// maxCommitScanSegment is the largest segment lastCommitBefore reads into
// memory: PostgreSQL's default 16 MiB and the sizes near it.
const maxCommitScanSegment = 64 << 20

// lastCommitBefore returns the time of the last commit in the few segments
// before seg along h, read from the archive: the first recovery target time
// that needs seg.
//
// The scan holds a whole segment in memory (pg.LastCommitTime takes its
// plaintext), one at a time: with segments larger than
// maxCommitScanSegment it is skipped, and the caller falls back to the
// stop of the newest snapshot before seg, so that verify's memory stays
// bounded whatever the segment size.
func (v *run) lastCommitBefore(ctx context.Context, cw *clusterWAL, h pg.History, seg pg.SegNo) (time.Time, string) {
	segSize := cw.l.Cluster.SegSize
	if segSize > maxCommitScanSegment {
		return time.Time{}, ""
	}
	for prev := seg; prev > 0 && prev+4 > seg; {
		prev--
		name := cw.l.SegmentName(h.SegmentTimeline(prev, segSize), prev)
		key, err := walarchive.Key(cw.l.Cluster.SystemID, name)
		if err != nil {
			break
		}
		rc, err := v.r.Store().Get(ctx, key)
		if err != nil {
			break
		}
		var buf bytes.Buffer
		_, err = v.a.Decode(ctx, key, rc, name, cw.l.Cluster.SystemID, &buf)
		rc.Close()
		if err != nil {
			break
		}
		t, found, err := pg.LastCommitTime(buf.Bytes())
		if err != nil {
			break
		}
		if found {
			return t, "last commit"
		}
	}
	return time.Time{}, ""
}
