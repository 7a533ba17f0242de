package walarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/storage"
)

// putSummary writes the block summary sum made while segment f (object
// record seg) was archived. A summary that cannot be made or written is
// logged and said in res: the segment is archived all the same.
func (a *Archive) putSummary(ctx context.Context, cluster uint64, f pg.WALFile, seg *Meta, sum *summarizer, res *PutResult) {
	if sum == nil {
		return
	}
	s, err := sum.finish()
	if err == nil {
		s.SegmentMAC = seg.MAC
		err = a.writeSummary(ctx, cluster, s)
	}
	if err != nil {
		res.SummaryErr = err
		a.log.Warn("segment archived without its block summary; incremental backups over it will read page LSNs", "file", f.Name(), "err", err)
		return
	}
	res.Summary = SummaryKey(cluster, s.Timeline, s.Segment, s.SegSize)
}

// writeSummary stores s, create-only: one already there (an earlier push
// of the same segment) is kept.
func (a *Archive) writeSummary(ctx context.Context, cluster uint64, s *Summary) error {
	data := s.Encode()
	key := SummaryKey(cluster, s.Timeline, s.Segment, s.SegSize)
	m := Meta{Name: s.Name(), Kind: KindSummary, SystemID: cluster, SegSize: s.SegSize, Size: int64(len(data))}
	if _, err := a.createBytes(ctx, key, &m, data); err != nil && !errors.Is(err, storage.ErrExists) {
		return fmt.Errorf("write block summary %s: %w", key, err)
	}
	return nil
}

// ReadSummary reads and checks the block summary of segment seg of timeline
// tli: its MAC, its format, and that it describes that segment. A summary
// not archived is a *NotArchivedError, a damaged or swapped one a
// *CorruptError.
func (a *Archive) ReadSummary(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32) (*Summary, error) {
	key := SummaryKey(cluster, tli, seg, segSize)
	name := pg.SegmentName(tli, seg, segSize) + SummarySuffix
	var buf bytes.Buffer
	if _, err := a.get(ctx, key, expect{name: name, kind: KindSummary, cluster: cluster}, &limitedWriter{w: &buf, n: maxSummarySize}); err != nil {
		return nil, err
	}
	s, err := DecodeSummary(buf.Bytes())
	if err != nil {
		return nil, corruptf(key, "%v", err)
	}
	if s.Timeline != tli || s.Segment != seg || s.SegSize != segSize {
		return nil, corruptf(key, "summarizes segment %s", s.Name())
	}
	return s, nil
}

// SummarizeSegment makes the block summary of segment seg of timeline tli
// from its bytes (a copy in pg_wal, which may still be being written: the
// summary then ends where its valid WAL does, Summary.Complete false).
// Records that begin at or after upTo (if not 0) are left out.
func SummarizeSegment(tli pg.TimelineID, seg pg.SegNo, segSize uint32, r io.Reader, upTo pg.LSN) (*Summary, error) {
	z := newSummarizer(tli, seg, segSize)
	z.upTo = upTo
	buf := make([]byte, 1<<20)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			z.Write(buf[:n])
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return z.finish()
}
