package walarchive

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// plain is a Crypter that does not encrypt, so that fuzzing reaches the
// record and the zstd stream behind the age layer.
type plain struct{}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (plain) Encrypt(dst io.Writer) (io.WriteCloser, error) { return nopCloser{dst}, nil }
func (plain) Decrypt(src io.Reader) (io.Reader, error)      { return src, nil }

func FuzzDecodeRecord(f *testing.F) {
	m := Meta{Name: "000000010000000000000003", Kind: KindSegment, SystemID: 1, SegSize: 1 << 20, Size: 1 << 20}
	f.Add(encodeFrame(&m))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := frameSize(b)
		if err != nil || len(b) < frameHeaderSize+n {
			return
		}
		got, err := decodeRecord(b[frameHeaderSize : frameHeaderSize+n])
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes.
		if again := encodeFrame(&got); !bytes.Equal(again, b[:frameHeaderSize+n]) {
			t.Fatalf("record does not round-trip: %x vs %x", again, b[:frameHeaderSize+n])
		}
	})
}

func FuzzDecode(f *testing.F) {
	a := New(mem.New(), plain{}, MACKey{1}, Options{})
	name := "000000010000000000000003"
	// A segment that compresses to almost nothing keeps the seed small,
	// which the fuzzer needs to make progress.
	data := make([]byte, 1<<20)
	copy(data, fakeSegment(testSys, 1, 3, 1<<20, 1)[:pg.WALLongPageHeaderSize])
	m := Meta{Name: name, Kind: KindSegment, SystemID: testSys, SegSize: 1 << 20, Size: int64(len(data))}
	m.MAC = ComputeMAC(&a.mac, m, data)
	buf, _, err := a.encode(context.Background(), &m, bytes.NewReader(data), nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	obj := bytes.Clone(buf.Bytes())
	f.Add(obj)
	f.Add(obj[:100])
	f.Fuzz(func(t *testing.T, b []byte) {
		// Records claiming a huge file make the decoder produce up to that
		// many bytes before the MAC fails: correct, but slow to fuzz.
		if n, err := frameSize(b); err == nil && len(b) >= frameHeaderSize+n {
			if m, err := decodeRecord(b[frameHeaderSize : frameHeaderSize+n]); err == nil && m.Size > 2<<20 {
				return
			}
		}
		var out bytes.Buffer
		got, err := a.Decode(context.Background(), "k", bytes.NewReader(b), name, testSys, &out)
		if err != nil {
			return
		}
		if got.Size != int64(out.Len()) || ComputeMAC(&a.mac, got, out.Bytes()) != got.MAC {
			t.Fatalf("accepted an object whose contents do not match its record")
		}
	})
}
