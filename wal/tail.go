package wal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// The receiver's tail: recovery asks for segment X of timeline t, and the
// archive has no X but wal-receive's pieces of it. What may be served, and
// why (docs/wal.md, "Recovering the last acknowledged byte"):
//
//   - Pieces that cover X from its first to its last byte are X: served as
//     the segment (the receiver died before it archived X whole).
//   - Otherwise the pieces from byte 0 up to where they reach are the last
//     WAL the receiver acknowledged on t. Recovery gets them followed by
//     zeros up to the segment size, as a pg_receivewal .partial is used:
//     it replays up to the last complete record and ends there.
//   - Only at the end of t: no later segment and no pieces of a later
//     segment of t are archived. A hole in the middle of a timeline is a
//     gap, and serving a short segment there would make recovery end
//     early, at the wrong point, as if it were the end of the WAL.
//   - If a timeline u branched off t before the end of the pieces (a
//     standby promoted while t's primary had acknowledged more: the bytes
//     past the switch point are commits only t has), the tail is served
//     only to a recovery whose target timeline is t. PostgreSQL asks for
//     t's X also while recovering along u when u's copy of X is missing,
//     and must then not read t's bytes past the switch point: that is why
//     PostgreSQL itself archives that segment as X.partial. The target is
//     read from recovery_target_timeline (postmaster.opts, then
//     postgresql.auto.conf, then postgresql.conf; 'latest', the default,
//     is the newest timeline with an archived history file).
//   - A complete segment always wins: pieces are never served where the
//     archive has X.

// pieceEntries returns the pieces of segment name a directory listing
// holds.
func pieceEntries(l *dirListing, name string) []walarchive.Piece {
	var out []walarchive.Piece
	for n := range l.Entries {
		if !strings.HasPrefix(n, name+".") {
			continue
		}
		if p, ok := walarchive.ParsePieceName(n); ok && p.Segment == name {
			out = append(out, p)
		}
	}
	return out
}

// laterOnTimeline reports whether a listing of a log directory holds a
// segment, or pieces of a segment, of the same timeline after name.
func laterOnTimeline(l *dirListing, name string) bool {
	for n := range l.Entries {
		seg := n
		if p, ok := walarchive.ParsePieceName(n); ok {
			seg = p.Segment
		} else if f, err := pg.ParseWALFileName(n); err != nil || f.Kind != pg.WALSegment {
			continue
		}
		if seg[:8] == name[:8] && seg > name {
			return true
		}
	}
	return false
}

// tailPlan is a tail found servable: the chain of pieces and where it ends.
type tailPlan struct {
	chain []walarchive.Piece
	end   int64
}

// findTail decides whether the pieces of segment name (listed in l) may be
// served, by the rules above.
func (f *Fetcher) findTail(ctx context.Context, name string, l *dirListing) (tailPlan, bool, error) {
	segSize := f.opts.Cluster.SegSize
	chain, end := walarchive.Chain(pieceEntries(l, name))
	if end == 0 {
		return tailPlan{}, false, nil
	}
	plan := tailPlan{chain: chain, end: end}
	if end == int64(segSize) {
		return plan, true, nil
	}
	file, _ := pg.ParseWALFileName(name)
	seg, err := file.SegNo(segSize)
	if err != nil {
		return tailPlan{}, false, err
	}
	if laterOnTimeline(l, name) {
		f.log.Info("not serving the streamed pieces of a segment that is not the end of its timeline", "segment", name, "bytes", end)
		return tailPlan{}, false, nil
	}
	if next := pg.SegmentName(file.Timeline, seg+1, segSize); next[:16] != name[:16] {
		nl, err := f.listing(ctx, next[:16], true)
		if err != nil {
			return tailPlan{}, false, err
		}
		for n := range nl.Entries {
			if n[:8] == name[:8] {
				f.log.Info("not serving the streamed pieces of a segment that is not the end of its timeline", "segment", name, "bytes", end)
				return tailPlan{}, false, nil
			}
		}
	}
	tailEnd := seg.Start(segSize) + pg.LSN(end)
	branched, newest, err := f.branches(ctx, file.Timeline, tailEnd)
	if err != nil {
		return tailPlan{}, false, err
	}
	if len(branched) == 0 {
		return plan, true, nil
	}
	target, how := f.targetTimeline(newest)
	if target == file.Timeline {
		f.log.Info("serving the old timeline's tail past a branch: recovery targets that timeline", "segment", name, "bytes", end,
			"branched", branched, "target_timeline", how)
		return plan, true, nil
	}
	f.log.Info("not serving the old timeline's tail: timelines branched off it before its end, and recovery does not target it",
		"segment", name, "tail_end", tailEnd, "branched", branched, "target_timeline", how)
	return tailPlan{}, false, nil
}

// branches returns the archived timelines that branched off tli before
// lsn, and the newest timeline with an archived history file.
func (f *Fetcher) branches(ctx context.Context, tli pg.TimelineID, lsn pg.LSN) ([]pg.TimelineID, pg.TimelineID, error) {
	hl, err := f.listing(ctx, walarchive.HistoryDir, true)
	if err != nil {
		return nil, 0, err
	}
	var out []pg.TimelineID
	newest := pg.TimelineID(1)
	for n := range hl.Entries {
		hf, err := pg.ParseWALFileName(n)
		if err != nil || hf.Kind != pg.WALTimelineHistory {
			continue
		}
		newest = max(newest, hf.Timeline)
		if hf.Timeline <= tli {
			continue
		}
		h, err := f.arch.History(ctx, f.cluster, hf.Timeline)
		if err != nil {
			return nil, 0, fmt.Errorf("read the history of timeline %d: %w", hf.Timeline, err)
		}
		if sp, ok := h.End(tli); ok && sp < lsn {
			out = append(out, hf.Timeline)
		}
	}
	return out, newest, nil
}

// targetTimeline is the timeline the recovery of the data directory
// targets: its recovery_target_timeline, with 'latest' (the default) the
// newest timeline that has a history file. 0 when it cannot tell
// ('current', or a value it does not understand).
func (f *Fetcher) targetTimeline(newest pg.TimelineID) (pg.TimelineID, string) {
	if f.opts.TargetTimeline != 0 {
		return f.opts.TargetTimeline, "given"
	}
	v, from := recoveryTargetTimeline(f.opts.PGData)
	switch v {
	case "", "latest":
		return newest, "latest (" + from + ")"
	case "current":
		return 0, "current (" + from + ")"
	}
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, v + " (" + from + ")"
	}
	return pg.TimelineID(n), v + " (" + from + ")"
}

// recoveryTargetTimeline reads recovery_target_timeline as the server of
// pgdata runs with it: a -c on its command line (postmaster.opts) wins
// over postgresql.auto.conf, which wins over postgresql.conf. Include
// directives are not followed.
func recoveryTargetTimeline(pgdata string) (value, from string) {
	if b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.opts")); err == nil {
		for _, arg := range splitOpts(string(b)) {
			if v, ok := strings.CutPrefix(arg, "recovery_target_timeline="); ok {
				value, from = v, "postmaster.opts"
			}
		}
		if from != "" {
			return strings.ToLower(value), from
		}
	}
	for _, name := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		fh, err := os.Open(filepath.Join(pgdata, name))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			if v, ok := confValue(sc.Text(), "recovery_target_timeline"); ok {
				value, from = v, name
			}
		}
		fh.Close()
	}
	return strings.ToLower(value), from
}

// splitOpts splits postmaster.opts, whose arguments are double-quoted.
func splitOpts(s string) []string {
	var out []string
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			return out
		}
		j := strings.IndexByte(s[i+1:], '"')
		if j < 0 {
			return out
		}
		out = append(out, s[i+1:i+1+j])
		s = s[i+j+2:]
	}
}

// confValue returns the value line sets for key in postgresql.conf syntax
// (key = value, key value; quoted or not; a # comment after).
func confValue(line, key string) (string, bool) {
	line = strings.TrimSpace(line)
	k := line
	if i := strings.IndexAny(line, " \t="); i >= 0 {
		k = line[:i]
	}
	if !strings.EqualFold(k, key) {
		return "", false
	}
	rest := strings.TrimLeft(line[len(k):], " \t")
	rest = strings.TrimLeft(strings.TrimPrefix(rest, "="), " \t")
	if strings.HasPrefix(rest, "'") {
		end := strings.IndexByte(rest[1:], '\'')
		if end < 0 {
			return "", false
		}
		return rest[1 : 1+end], true
	}
	if i := strings.IndexAny(rest, " \t#"); i >= 0 {
		rest = rest[:i]
	}
	return rest, rest != ""
}

// serveTail writes the tail to dest: the chain's bytes, then zeros up to
// the segment size (PostgreSQL takes only whole-size segments from
// restore_command), each piece verified before its bytes are written.
func (f *Fetcher) serveTail(ctx context.Context, plan tailPlan, dest string) error {
	segSize := int64(f.opts.Cluster.SegSize)
	return writeAtomic(dest, func(w io.Writer) error {
		n, err := f.arch.ReadChain(ctx, f.cluster, plan.chain, w)
		if err != nil {
			return err
		}
		if n != plan.end {
			return fmt.Errorf("pieces ended at %d, not %d", n, plan.end)
		}
		_, err = io.Copy(w, io.LimitReader(zeros{}, segSize-n))
		return err
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// tailOrMissing serves the receiver's tail of segment name when the rules
// allow it; otherwise the file is not in the archive.
func (f *Fetcher) tailOrMissing(ctx context.Context, name, key string, l *dirListing, dest string) (FetchResult, error) {
	res := FetchResult{Name: name}
	plan, ok, err := f.findTail(ctx, name, l)
	if err != nil {
		return res, err
	}
	if !ok {
		return res, &walarchive.NotArchivedError{Key: key, Name: name}
	}
	if err := f.serveTail(ctx, plan, dest); err != nil {
		var na *walarchive.NotArchivedError
		if errors.As(err, &na) {
			// A piece went (the segment was archived whole meanwhile):
			// the caller lists again.
			return res, fmt.Errorf("the pieces of %s changed while read: %w", name, err)
		}
		return res, err
	}
	res.Source, res.Size = "pieces", int64(f.opts.Cluster.SegSize)
	res.Tail = plan.end
	f.log.Info("served the streamed tail of a segment", "segment", name, "bytes", plan.end, "pieces", len(plan.chain))
	return res, nil
}
