package walarchive

import (
	"bytes"
	"context"

	"github.com/zeebo/blake3"
)

// Frame is one piece of a file that is still being written, compressed and
// checked while the rest is written (Precompress), kept with the length and
// the BLAKE3 digest of the bytes it was made from. PutFromAhead uses a
// frame only for a piece of the final file with that digest, so a piece
// that changed after it was compressed costs time, never correctness.
//
// A digest rather than a copy of the piece: the agent holds the frames of
// two segments, and copies of their pieces were 32 MiB of its memory for
// 16 MiB segments. Comparing digests costs the upload a BLAKE3 pass over
// the matched pieces (about 0.3 ms per MiB here) where comparing bytes cost
// a memcmp; the MAC needs no pass over them, as before.
type Frame struct {
	n    int      // bytes of the piece
	sum  [32]byte // BLAKE3-256 of the piece
	comp []byte
	// meta is the segment's record, and mac the MAC's state once it has
	// read the segment up to the end of this piece: an upload whose pieces
	// all matched up to here starts its MAC from it.
	meta Meta
	mac  *blake3.Hasher
}

// Size is the memory the frame holds.
func (f *Frame) Size() int { return cap(f.comp) }

// Precompress compresses piece, the next piece of the segment called name
// after prev (nil for the first), as PutFrom would compress a chunk, checks
// that it decompresses to piece, and keeps its digest. It takes one of the
// archive's CPU slots, like an upload's chunk. piece is not retained.
func (a *Archive) Precompress(ctx context.Context, ci ClusterInfo, name string, prev *Frame, piece []byte) (*Frame, error) {
	fp, err := a.compress(ctx, a.slots, piece)
	if err != nil {
		return nil, err
	}
	fr := &Frame{n: len(piece), sum: blake3.Sum256(piece), comp: bytes.Clone(*fp),
		meta: Meta{Name: name, Kind: KindSegment, SystemID: ci.SystemID, SegSize: ci.SegSize, Size: int64(ci.SegSize)}}
	a.frames.put(fp)
	switch {
	case prev == nil:
		fr.mac = macState(&a.mac, &fr.meta)
	case prev.mac != nil && prev.meta == fr.meta:
		fr.mac = prev.mac.Clone()
	}
	if fr.mac != nil {
		fr.mac.Write(piece)
	}
	return fr, nil
}

// macThrough returns the MAC's state after piece i of the file m describes
// if f carries it, else nil.
func (f *Frame) macThrough(m *Meta) *blake3.Hasher {
	want := *m
	want.MAC = [32]byte{}
	if f.mac == nil || f.meta != want {
		return nil
	}
	return f.mac.Clone()
}

// Ahead is what was compressed of a segment before it was complete:
// Frames[i], if not nil, was made from bytes [i*Piece, (i+1)*Piece) as they
// were then. The segment is cut into Piece-sized chunks when it is uploaded
// (PutFromAhead), and a chunk without an equal frame is compressed then.
type Ahead struct {
	Piece  int
	Frames []*Frame
}

// minPiece keeps frames from becoming so small that their headers and lost
// history cost compression.
const minPiece = 64 << 10

// usable reports whether the segment may be cut as a says: pieces neither
// tiny nor larger than the chunks the archive's buffers hold.
func (a *Ahead) usable() bool {
	return a != nil && a.Piece >= minPiece && a.Piece <= chunkSize
}

// frame returns the frame made from exactly chunk, the i-th piece of the
// file, or nil.
func (a *Ahead) frame(i int, chunk []byte) *Frame {
	if !a.usable() || i >= len(a.Frames) {
		return nil
	}
	f := a.Frames[i]
	if f == nil || f.n != a.Piece || len(chunk) != f.n || blake3.Sum256(chunk) != f.sum {
		return nil
	}
	return f
}
