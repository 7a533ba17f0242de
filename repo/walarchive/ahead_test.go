package walarchive

import (
	"bytes"
	"context"
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/storage/mem"
	"github.com/zeebo/blake3"
)

// Frames made ahead are used for the pieces of the final file they were
// made from, and only for those: a piece that changed after it was
// compressed, a frame of the wrong size and a missing frame are compressed
// at upload. Whatever the frames, the archived file is the final file, and
// the object is the same as one PutFrom makes, but for its frame layout: the
// MAC, which covers the file, is the same.
func TestPutFromAhead(t *testing.T) {
	ctx := context.Background()
	const piece = 64 << 10
	final := fakeSegment(testSys, 1, 3, testSegSize, 1)
	early := bytes.Clone(final)
	early[5*piece+100] ^= 0xFF // piece 5 changed after it was compressed
	fx := newRepo(t, mem.New())
	n := testSegSize / piece
	name := segName(1, 3)
	frames := make([]*Frame, n-1) // the last piece is never made ahead
	var prev *Frame
	for i := range frames {
		f, err := fx.arch.Precompress(ctx, testCluster, name, prev, early[i*piece:(i+1)*piece])
		if err != nil {
			t.Fatal(err)
		}
		frames[i], prev = f, f
	}
	frames[7] = nil                                                                                                  // not compressed in time
	frames[9] = &Frame{n: piece / 2, sum: blake3.Sum256(final[9*piece : 9*piece+piece/2]), comp: []byte("not zstd")} // wrong size
	res, err := fx.arch.PutFromAhead(ctx, testCluster, name, bytes.NewReader(final), int64(len(final)), &Ahead{Piece: piece, Frames: frames})
	if err != nil {
		t.Fatal(err)
	}
	if want := n - 1 - 3; res.Ahead != want || !res.Created {
		t.Errorf("%d frames taken ahead, want %d (%+v)", res.Ahead, want, res)
	}
	got, m, err := fx.arch.ReadFile(ctx, testSys, name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, final) {
		t.Fatal("the archived segment is not the final file")
	}
	if want := ComputeMAC(&fx.arch.mac, m, final); m.MAC != want {
		t.Error("MAC differs from the file's")
	}
	// PostgreSQL pushes again: identical contents, whatever the frames.
	again, err := fx.arch.Put(ctx, testCluster, name, final)
	if err != nil || again.Created {
		t.Fatalf("second push: %+v %v", again, err)
	}

	// Every piece as it was compressed, with frames that carry the MAC's
	// state; and the same bytes with frames made for another segment's
	// name, whose MAC states must not be used.
	for _, c := range []struct {
		seg    pg.SegNo
		frames string
	}{{5, segName(1, 5)}, {6, segName(1, 7)}} {
		data := fakeSegment(testSys, 1, c.seg, testSegSize, 3)
		var frames []*Frame
		var prev *Frame
		for i := range n - 1 {
			f, err := fx.arch.Precompress(ctx, testCluster, c.frames, prev, data[i*piece:(i+1)*piece])
			if err != nil {
				t.Fatal(err)
			}
			frames, prev = append(frames, f), f
		}
		name := segName(1, c.seg)
		res, err := fx.arch.PutFromAhead(ctx, testCluster, name, bytes.NewReader(data), testSegSize, &Ahead{Piece: piece, Frames: frames})
		if err != nil || res.Ahead != n-1 {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
		got, m, err := fx.arch.ReadFile(ctx, testSys, name)
		if err != nil || !bytes.Equal(got, data) || m.MAC != ComputeMAC(&fx.arch.mac, m, data) {
			t.Fatalf("%s: read back %d bytes, MAC right: %v, %v", name, len(got), m.MAC == ComputeMAC(&fx.arch.mac, m, data), err)
		}
	}

	// Pieces outside what the archive can cut are ignored, not trusted.
	for _, p := range []int{minPiece / 2, chunkSize * 2} {
		res, err := fx.arch.PutFromAhead(ctx, testCluster, segName(1, 4), bytes.NewReader(fakeSegment(testSys, 1, 4, testSegSize, 2)), testSegSize,
			&Ahead{Piece: p, Frames: []*Frame{{n: p, sum: blake3.Sum256(make([]byte, p)), comp: []byte("x")}}})
		if err != nil || res.Ahead != 0 {
			t.Errorf("piece %d: %+v %v", p, res, err)
		}
	}
}
