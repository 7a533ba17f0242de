package walarchive

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/tidemarkdb/tidemark/storage"
)

func TestPieceName(t *testing.T) {
	p := Piece{Segment: segName(1, 3), Start: 0x2000, End: 0xA3F18}
	name := p.Name()
	if name != "000000010000000000000003.00002000.000A3F18.piece" {
		t.Fatalf("name %q", name)
	}
	got, ok := ParsePieceName(name)
	if !ok || got != p {
		t.Fatalf("parse %q: %+v %v", name, got, ok)
	}
	for _, bad := range []string{
		"000000010000000000000003.00002000.00002000.piece", // empty
		"000000010000000000000003.00003000.00002000.piece", // backwards
		"000000010000000000000003.0000200a.00003000.piece", // lower case
		"000000010000000000000003.partial",
		"00000001.history.00000000.00001000.piece",
		"000000000000000000000003.00000000.00001000.piece", // timeline 0
		"000000010000000000000003.00000000.40000001.piece", // past 1 GiB
		"000000010000000000000003.00000000.00001000.piece.x",
	} {
		if _, ok := ParsePieceName(bad); ok {
			t.Errorf("ParsePieceName(%q) accepted", bad)
		}
	}
}

func TestChain(t *testing.T) {
	s := segName(1, 3)
	pc := func(a, b int64) Piece { return Piece{Segment: s, Start: a, End: b} }
	for _, tc := range []struct {
		name   string
		pieces []Piece
		end    int64
		n      int
	}{
		{"none", nil, 0, 0},
		{"not from zero", []Piece{pc(10, 20)}, 0, 0},
		{"run", []Piece{pc(20, 30), pc(0, 10), pc(10, 20)}, 30, 3},
		{"hole", []Piece{pc(0, 10), pc(20, 30)}, 10, 1},
		{"overlap after a restart", []Piece{pc(0, 10), pc(10, 25), pc(5, 40), pc(40, 50)}, 50, 3},
		{"orphan ahead", []Piece{pc(0, 10), pc(30, 40), pc(10, 20)}, 20, 2},
		{"contained", []Piece{pc(0, 100), pc(10, 20), pc(100, 110)}, 110, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain, end := Chain(tc.pieces)
			if end != tc.end || len(chain) != tc.n {
				t.Fatalf("Chain = %v, %d; want %d pieces to %d", chain, end, tc.n, tc.end)
			}
		})
	}
}

func TestPieces(t *testing.T) {
	backends(t, func(t *testing.T, store storage.Store) {
		fx := newRepo(t, store)
		ctx := context.Background()
		seg := fakeSegment(testSys, 1, 3, testSegSize, 7)
		name := segName(1, 3)
		cuts := []int64{0, 5000, 5001, 300000, 300000 + 8192}
		for i := 0; i+1 < len(cuts); i++ {
			res, err := fx.arch.PutPiece(ctx, testCluster, name, cuts[i], seg[cuts[i]:cuts[i+1]])
			if err != nil || !res.Created {
				t.Fatalf("put piece %d: %v %+v", i, err, res)
			}
		}
		// The same bytes again (a receiver that restarted): a success.
		if res, err := fx.arch.PutPiece(ctx, testCluster, name, 5000, seg[5000:5001]); err != nil || res.Created {
			t.Fatalf("identical piece again: %v %+v", err, res)
		}
		// Other bytes under the name: refused, and the piece stays.
		other := bytes.Clone(seg[5000:5001])
		other[0]++
		if _, err := fx.arch.PutPiece(ctx, testCluster, name, 5000, other); !errors.Is(err, ErrConflict) {
			t.Fatalf("different piece: %v", err)
		}
		// A first piece must be the segment's start.
		if _, err := fx.arch.PutPiece(ctx, testCluster, segName(1, 4), 0, seg[:100]); !errors.Is(err, ErrInvalidFile) {
			t.Fatalf("piece 0 of another segment's bytes: %v", err)
		}
		if _, err := fx.arch.PutPiece(ctx, testCluster, name, testSegSize-1, seg[:2]); !errors.Is(err, ErrInvalidFile) {
			t.Fatalf("piece past the end: %v", err)
		}

		ps, err := fx.arch.ListPieces(ctx, testSys, name)
		if err != nil || len(ps) != 4 {
			t.Fatalf("list pieces: %v %v", ps, err)
		}
		chain, end := Chain(ps)
		var buf bytes.Buffer
		n, err := fx.arch.ReadChain(ctx, testSys, chain, &buf)
		if err != nil || n != end || end != cuts[len(cuts)-1] || !bytes.Equal(buf.Bytes(), seg[:end]) {
			t.Fatalf("read chain: %d %v (end %d)", n, err, end)
		}

		// Listings see the pieces as the timeline's tail, not as
		// foreign objects, and a directory listing names them.
		mustPut(t, fx.arch, segName(1, 2), fakeSegment(testSys, 1, 2, testSegSize, 1))
		l, err := fx.arch.List(ctx, testSys)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Foreign) != 0 {
			t.Fatalf("foreign: %v", l.Foreign)
		}
		tail, ok := l.Timeline(1).Tail()
		if !ok || tail.Name != name || tail.End != end || tail.Complete {
			t.Fatalf("tail %+v %v", tail, ok)
		}
		ents, err := fx.arch.ListDir(ctx, testSys, name[:16])
		if err != nil || len(ents) != 5 {
			t.Fatalf("list dir: %v %v", ents, err)
		}
		// Once the segment is archived whole, its pieces are no tail.
		mustPut(t, fx.arch, name, seg)
		if l, err = fx.arch.List(ctx, testSys); err != nil {
			t.Fatal(err)
		}
		if tail, ok := l.Timeline(1).Tail(); ok {
			t.Fatalf("tail after the segment: %+v", tail)
		}
		if err := fx.arch.DeletePieces(ctx, testSys, ps); err != nil {
			t.Fatal(err)
		}
		if ps, _ := fx.arch.ListPieces(ctx, testSys, name); len(ps) != 0 {
			t.Fatalf("pieces left: %v", ps)
		}

		// A piece moved to another name is refused on read.
		p0 := Piece{Segment: segName(1, 5), Start: 0, End: 100}
		p1 := Piece{Segment: segName(1, 5), Start: 100, End: 200}
		s5 := fakeSegment(testSys, 1, 5, testSegSize, 3)
		if _, err := fx.arch.PutPiece(ctx, testCluster, p0.Segment, 0, s5[:100]); err != nil {
			t.Fatal(err)
		}
		b := getObj(t, store, PieceKey(testSys, p0))
		if err := store.Put(ctx, PieceKey(testSys, p1), bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
		if _, err := fx.arch.GetPiece(ctx, testSys, p1, &buf); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("moved piece: %v", err)
		}
	})
}

func getObj(t *testing.T, st storage.Store, key string) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(rc); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func FuzzParsePieceName(f *testing.F) {
	f.Add("000000010000000000000003.00002000.000A3F18.piece")
	f.Add("000000010000000000000003.partial")
	f.Fuzz(func(t *testing.T, name string) {
		p, ok := ParsePieceName(name)
		if !ok {
			return
		}
		if p.Name() != name || p.Start >= p.End {
			t.Fatalf("%q parses to %+v, which names %q", name, p, p.Name())
		}
		if _, _, ok := parsePieceKey(PieceKey(1, p)); !ok {
			t.Fatalf("key of %q does not parse", name)
		}
	})
}

// TestRawFrame checks the raw-block frames small pieces are stored in
// against klauspost's decoder and, where installed, the zstd command (the
// by-hand recipe of docs/format.md), at every header and block boundary.
func TestRawFrame(t *testing.T) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	cli, _ := exec.LookPath("zstd")
	for _, n := range []int{1, 255, 256, 4000, 65535 + 256, 65536 + 256, 128 << 10, 128<<10 + 1, 300000} {
		data := make([]byte, n)
		rand.Read(data)
		frame := appendRawFrame([]byte("x"), data)[1:]
		got, err := dec.DecodeAll(frame, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if cli == "" {
			continue
		}
		cmd := exec.Command(cli, "-d", "-c")
		cmd.Stdin = bytes.NewReader(frame)
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("%d bytes: zstd -d: %v", n, err)
		}
	}
	if cli == "" {
		t.Log("zstd not installed: checked with klauspost's decoder only")
	}
}
