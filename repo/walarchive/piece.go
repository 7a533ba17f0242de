package walarchive

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/storage"
)

// A piece is a byte range of a segment that is still being written, streamed
// by wal-receive and stored before the segment is complete, so that a commit
// is durable in the repository before PostgreSQL reports it (docs/format.md,
// "Segment pieces"). Its object sits beside the segment's:
//
//	wal/<cluster>/<TTTTTTTTXXXXXXXX>/<segment>.<SSSSSSSS>.<EEEEEEEE>.piece
//
// where SSSSSSSS and EEEEEEEE are the first byte and the byte after the last,
// as offsets in the segment, in 8 upper-case hex digits. The object has the
// format of every WAL object (an age stream of the record frame and the
// zstd-compressed bytes), with kind KindPiece and the piece's name as the
// record's name, so that the MAC binds the bytes to their segment, timeline
// and offsets.
//
// Pieces are written create-only, like segments. Once the whole segment is
// archived its pieces are redundant and are deleted; pieces of a segment that
// never completes (the end of the WAL when a primary died, the tail of an
// old timeline after a promotion) stay: they are the only copy of those
// bytes.

// PieceSuffix ends every piece's name.
const PieceSuffix = ".piece"

// Piece is one piece of a segment: bytes [Start, End) of segment Segment
// (a segment's file name).
type Piece struct {
	Segment    string
	Start, End int64
}

// Name returns the piece's object name.
func (p Piece) Name() string {
	return fmt.Sprintf("%s.%08X.%08X%s", p.Segment, uint32(p.Start), uint32(p.End), PieceSuffix)
}

// Size is the number of bytes the piece holds.
func (p Piece) Size() int64 { return p.End - p.Start }

// ParsePieceName parses a piece's object name. It accepts only the one
// spelling Name produces, for a segment name with a non-empty range below
// the largest segment size.
func ParsePieceName(name string) (Piece, bool) {
	rest, ok := strings.CutSuffix(name, PieceSuffix)
	if !ok || len(rest) != 24+1+8+1+8 || rest[24] != '.' || rest[33] != '.' {
		return Piece{}, false
	}
	f, err := pg.ParseWALFileName(rest[:24])
	if err != nil || f.Kind != pg.WALSegment {
		return Piece{}, false
	}
	s, ok1 := parseHex8(rest[25:33])
	e, ok2 := parseHex8(rest[34:42])
	if !ok1 || !ok2 || s >= e || uint64(e) > pg.MaxWALSegSize {
		return Piece{}, false
	}
	return Piece{Segment: rest[:24], Start: int64(s), End: int64(e)}, true
}

func parseHex8(s string) (uint32, bool) {
	var v uint32
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint32(c-'0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | uint32(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, len(s) == 8
}

// PieceKey returns the object key of a piece of cluster.
func PieceKey(cluster uint64, p Piece) string {
	return ClusterPrefix(cluster) + p.Segment[:16] + "/" + p.Name()
}

// Chain picks from the pieces of one segment the run that covers it from
// byte 0 without a hole, as far as the pieces reach, and returns it with its
// end. A piece may overlap the one before it (a receiver that restarted
// streamed some bytes again); the chain then uses the rest of it. Pieces
// that no chain from 0 reaches are left out: they were uploaded ahead of an
// earlier piece that never arrived, and what they hold comes again.
func Chain(pieces []Piece) (chain []Piece, end int64) {
	ps := slices.Clone(pieces)
	slices.SortFunc(ps, func(a, b Piece) int {
		if a.Start != b.Start {
			return int(a.Start - b.Start)
		}
		return int(b.End - a.End)
	})
	for i := 0; i < len(ps); {
		best := -1
		for ; i < len(ps) && ps[i].Start <= end; i++ {
			if ps[i].End > end && (best < 0 || ps[i].End > ps[best].End) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		chain = append(chain, ps[best])
		end = ps[best].End
	}
	return chain, end
}

// PutPiece archives bytes data at offset start of segment as a piece,
// create-only, for the cluster ci describes. It returns only once the object
// is durable or an identical one was already there; a different one under
// the name is a *ConflictError and is never replaced. A piece at offset 0
// must begin with the segment's first page header, checked like a
// segment's.
func (a *Archive) PutPiece(ctx context.Context, ci ClusterInfo, segment string, start int64, data []byte) (PutResult, error) {
	f, err := checkName(segment)
	if err != nil {
		return PutResult{}, err
	}
	p := Piece{Segment: segment, Start: start, End: start + int64(len(data))}
	switch {
	case f.Kind != pg.WALSegment:
		return PutResult{}, &InvalidFileError{Name: segment, Err: errors.New("pieces are of segments only")}
	case len(data) == 0 || start < 0 || p.End > int64(ci.SegSize):
		return PutResult{}, &InvalidFileError{Name: segment, Err: fmt.Errorf("piece [%d, %d) of a %d-byte segment", start, p.End, ci.SegSize)}
	case start == 0:
		if err := checkContents(ci, f, data); err != nil {
			return PutResult{}, err
		}
	}
	m := Meta{Name: p.Name(), Kind: KindPiece, SystemID: ci.SystemID, SegSize: ci.SegSize, Size: int64(len(data))}
	key := PieceKey(ci.SystemID, p)
	body, _, err := a.encode(ctx, &m, bytes.NewReader(data), nil, nil, nil)
	if err != nil {
		return PutResult{Key: key}, err
	}
	defer a.bufs.Put(body)
	if _, err := a.EnsureCluster(ctx, ci); err != nil {
		return PutResult{Key: key}, err
	}
	res, err := a.create(ctx, key, &m, body)
	if err == nil || !errors.Is(err, storage.ErrExists) {
		return res, err
	}
	// A receiver that restarted streams the same bytes again: identical is
	// a success, anything else is refused.
	have, err := a.get(ctx, key, expect{name: m.Name, kind: KindPiece, cluster: ci.SystemID}, io.Discard)
	if err != nil {
		return res, err
	}
	if subtle.ConstantTimeCompare(have.MAC[:], m.MAC[:]) != 1 || have.Size != m.Size {
		return res, &ConflictError{Key: key, Name: m.Name}
	}
	res.Created = false
	return res, nil
}

// GetPiece reads one piece of cluster, verified, and writes its bytes to w
// (see Get for when w's bytes may be used).
func (a *Archive) GetPiece(ctx context.Context, cluster uint64, p Piece, w io.Writer) (Meta, error) {
	m, err := a.get(ctx, PieceKey(cluster, p), expect{name: p.Name(), kind: KindPiece, cluster: cluster}, w)
	if err == nil && m.Size != p.Size() {
		return m, corruptf(PieceKey(cluster, p), "holds %d bytes, its name says %d", m.Size, p.Size())
	}
	return m, err
}

// ReadChain writes the bytes of a chain of pieces (Chain) of cluster to w,
// from offset 0 to the chain's end, each piece verified before any of its
// bytes reach w. Pieces are fetched readChainParallel at a time (within
// readChainBytes of pieces held at once), and written in order.
func (a *Archive) ReadChain(ctx context.Context, cluster uint64, chain []Piece, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		data []byte
		err  error
	}
	results := make([]chan result, len(chain))
	for i := range results {
		results[i] = make(chan result, 1)
	}
	// Tokens bound the pieces in flight; bytes bound their memory.
	tokens := make(chan struct{}, readChainParallel)
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	var held int64
	go func() {
		for i, p := range chain {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
			mu.Lock()
			for held > 0 && held+p.Size() > readChainBytes && ctx.Err() == nil {
				cond.Wait()
			}
			held += p.Size()
			mu.Unlock()
			go func() {
				var buf bytes.Buffer
				_, err := a.GetPiece(ctx, cluster, p, &buf)
				results[i] <- result{buf.Bytes(), err}
			}()
		}
	}()
	release := func(p Piece) {
		mu.Lock()
		held -= p.Size()
		cond.Broadcast()
		mu.Unlock()
		<-tokens
	}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		cond.Broadcast()
		mu.Unlock()
	})
	defer stop()
	var pos int64
	for i, p := range chain {
		if p.Start > pos || p.End <= pos {
			return pos, fmt.Errorf("pieces of %s do not chain at byte %d", p.Segment, pos)
		}
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			return pos, ctx.Err()
		}
		release(p)
		if r.err != nil {
			return pos, r.err
		}
		n, err := w.Write(r.data[pos-p.Start:])
		pos += int64(n)
		if err != nil {
			return pos, err
		}
	}
	return pos, nil
}

// readChainParallel and readChainBytes bound ReadChain's fetches.
const (
	readChainParallel = 8
	readChainBytes    = 32 << 20
)

// ListPieces lists the pieces of segment (its file name) of cluster.
func (a *Archive) ListPieces(ctx context.Context, cluster uint64, segment string) ([]Piece, error) {
	prefix := ClusterPrefix(cluster) + segment[:min(16, len(segment))] + "/" + segment + "."
	var out []Piece
	for oi, err := range a.store.List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		if p, ok := ParsePieceName(oi.Key[strings.LastIndexByte(oi.Key, '/')+1:]); ok && p.Segment == segment {
			out = append(out, p)
		}
	}
	return out, nil
}

// DeletePieces removes pieces of cluster.
func (a *Archive) DeletePieces(ctx context.Context, cluster uint64, pieces []Piece) error {
	const batch = 1000
	for len(pieces) > 0 {
		n := min(batch, len(pieces))
		keys := make([]string, n)
		for i, p := range pieces[:n] {
			keys[i] = PieceKey(cluster, p)
		}
		if err := a.store.Delete(ctx, keys...); err != nil {
			return fmt.Errorf("delete %d pieces of %s: %w", n, pieces[0].Segment, err)
		}
		pieces = pieces[n:]
	}
	return nil
}
