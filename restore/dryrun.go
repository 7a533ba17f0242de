package restore

import (
	"context"
	"fmt"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
)

// Plan is what a restore would do (restore --dry-run): which backup and
// why, which WAL recovery reads and whether the archive has it, what it
// fetches and writes, the room it needs and has, and how long it should
// take.
type Plan struct {
	SnapshotReason string
	// WALFirst and WALLast name the segments recovery reads, from the
	// backup's start to the target's segment (or to the last segment of
	// the unbroken run, for targets whose position only the WAL knows).
	WALFirst, WALLast string
	WALSegments       int64
	WALBytes          int64 // WALSegments times the segment size
	// WALComplete says the archive holds every segment recovery needs.
	WALComplete bool
	// FetchBytes and FetchBlobs are what is read from the repository:
	// the stored bytes of every distinct blob of the backup (for --delta,
	// at most this: what the directory already holds is not fetched).
	FetchBytes, FetchBlobs int64
	// WriteBytes are the bytes written into files (holes excluded; for
	// --delta, at most this).
	WriteBytes int64
	Space      []Space
	// Estimate is nil when no rate is known.
	Estimate *Estimate
	// Problems are the refusals the restore would meet, each one line
	// saying what to do. None: it would go ahead.
	Problems []string
}

// Space is the room on one file system the restore writes to.
type Space struct {
	Path      string
	Available int64
	Needed    int64 // the files, and a margin of WAL segments for recovery
	Enough    bool
}

// Measured are rates a restore of this cluster showed before.
type Measured struct {
	// Source says where they come from ("drill 20261204T030000Z").
	Source string
	At     time.Time
	// RestoreBytesPerSecond: bytes of files restored per second.
	RestoreBytesPerSecond float64
	// ReplayRatio: seconds of the cluster's history replayed per second
	// of recovery (0: unknown).
	ReplayRatio float64
}

// Estimate is how long the restore and the recovery after it should take.
type Estimate struct {
	RestoreSeconds float64
	// ReplaySeconds is 0 with ReplayKnown false when no replay rate is
	// known (no drill yet).
	ReplaySeconds float64
	ReplayKnown   bool
	Basis         string // the rates and where they come from
}

// snapshotReason says why s was chosen.
func snapshotReason(opts Options, s *repo.Snapshot, h pg.History) string {
	switch opts.Backup {
	case "latest":
		return fmt.Sprintf("--backup latest: the newest backup, %s", s.ID)
	case "":
	default:
		return fmt.Sprintf("--backup %s", s.ID)
	}
	if opts.Target.Kind == pg.TargetEnd || opts.Target.Kind == pg.TargetImmediate || opts.Target.Kind == pg.TargetName {
		return fmt.Sprintf("the newest backup that can recover along timeline %d", h.Timeline)
	}
	return fmt.Sprintf("the newest backup that can recover along timeline %d and ends before the %s target %s", h.Timeline, opts.Target.Kind, opts.Target.Describe())
}

// fill completes the plan from the laid-out snapshot: WAL range, bytes to
// fetch and write, the estimate.
func (pl *Plan) fill(ctx context.Context, r Repository, p *plan, s *repo.Snapshot, h pg.History, span walSpan, opts Options, res *Result) error {
	segSize := uint32(s.WALSegmentSize)
	first := pg.LSN(s.StartLSN).Segment(segSize)
	last := span.last
	if opts.Target.Kind == pg.TargetLSN && pl.WALComplete {
		last = min(last, opts.Target.LSN.Segment(segSize))
	}
	if opts.Target.Kind == pg.TargetImmediate {
		last = pg.LSN(s.StopLSN).PrevSegment(segSize)
	}
	if last < first {
		last = max(first, pg.LSN(s.StopLSN).PrevSegment(segSize))
	}
	name := func(seg pg.SegNo) string { return pg.SegmentName(h.SegmentTimeline(seg, segSize), seg, segSize) }
	pl.WALFirst, pl.WALLast = name(first), name(last)
	pl.WALSegments = int64(last-first) + 1
	pl.WALBytes = pl.WALSegments * int64(segSize)

	seen := map[blob.ID]bool{}
	want := func(id blob.ID) error {
		if id.IsZero() || seen[id] {
			return nil
		}
		seen[id] = true
		loc, err := r.Lookup(ctx, id)
		if err != nil {
			return err
		}
		pl.FetchBytes += int64(loc.Length)
		pl.FetchBlobs++
		return nil
	}
	err := p.eachBatch(ctx, r, func(files []entry) error {
		for i := range files {
			e := &files[i]
			pl.WriteBytes += e.allocated()
			if m := e.fmap; m != nil {
				for _, x := range m.Extents {
					if err := want(x.Blob); err != nil {
						return fmt.Errorf("%s: %w", e.rel, err)
					}
					if x.IsDelta() {
						if err := want(x.Base); err != nil {
							return fmt.Errorf("%s: %w", e.rel, err)
						}
					}
				}
				continue
			}
			for _, id := range e.node.Content {
				if err := want(id); err != nil {
					return fmt.Errorf("%s: %w", e.rel, err)
				}
			}
		}
		return nil
	}, nil, nil)
	if err != nil {
		return err
	}
	// global/pg_control, which the plan holds apart from the files.
	pl.WriteBytes += int64(len(p.control))
	if p.ctlNode != nil {
		for _, id := range p.ctlNode.Content {
			if err := want(id); err != nil {
				return fmt.Errorf("%s: %w", controlPath, err)
			}
		}
	}
	var m *Measured
	if opts.Rates != nil {
		var err error
		if m, err = opts.Rates(ctx, res.Cluster); err != nil {
			return fmt.Errorf("measured rates: %w", err)
		}
	}
	pl.Estimate = estimate(m, opts.Target, s, res, pl.WriteBytes)
	return nil
}

// estimate is the time a restore of writeBytes should take at the measured
// rates, or at the snapshot's own backup rate when nothing better is
// known; replay from the history recovery replays (from the backup's stop
// to the target, or to the last commit archived) at the measured ratio.
func estimate(m *Measured, t pg.RecoveryTarget, s *repo.Snapshot, res *Result, writeBytes int64) *Estimate {
	if m == nil || m.RestoreBytesPerSecond <= 0 {
		if s.Stats.Seconds <= 0 || s.Stats.LogicalBytes <= 0 {
			return nil
		}
		m = &Measured{Source: fmt.Sprintf("backup %s's read rate (no drill yet: run tidemark drill for measured restore and replay rates)", s.ID),
			RestoreBytesPerSecond: float64(s.Stats.LogicalBytes) / s.Stats.Seconds}
	}
	e := &Estimate{RestoreSeconds: float64(writeBytes) / m.RestoreBytesPerSecond,
		Basis: fmt.Sprintf("restore at %.1f MiB/s", m.RestoreBytesPerSecond/(1<<20))}
	if m.ReplayRatio > 0 {
		end := res.LastCommit
		if t.Kind == pg.TargetTime {
			end = t.Time
		}
		if t.Kind == pg.TargetImmediate {
			end = s.StopTime
		}
		if !end.IsZero() && end.After(s.StopTime) {
			e.ReplaySeconds = end.Sub(s.StopTime).Seconds() / m.ReplayRatio
		}
		e.ReplayKnown = !end.IsZero()
		e.Basis += fmt.Sprintf(", replay at %.0f s of history per second", m.ReplayRatio)
	}
	e.Basis += ", measured by " + m.Source
	return e
}
