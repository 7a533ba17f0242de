package pack

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

func build(t testing.TB, blobs ...[]byte) []byte {
	var buf bytes.Buffer
	b := NewBuilder(&buf)
	for i, d := range blobs {
		comp := blob.Raw
		raw := len(d)
		if i%2 == 1 {
			comp, raw = blob.Zstd, len(d)*3
		}
		if err := b.Add(blob.ID{byte(i + 1)}, blob.KindFile, comp, raw, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := b.Finish(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTrailerRoundtrip(t *testing.T) {
	p := build(t, []byte("hello"), []byte("compressed"), nil, bytes.Repeat([]byte{7}, 1000))
	entries, err := DecodeTrailer(p, int64(len(p)))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 || entries[3].Offset != 15 || entries[3].Length != 1000 || entries[1].RawLength != 30 {
		t.Fatalf("entries %+v", entries)
	}
	for _, e := range entries {
		if e.ID[0] == 1 && string(p[e.Offset:e.Offset+e.Length]) != "hello" {
			t.Fatal("blob bytes")
		}
	}
	empty := build(t)
	if e, err := DecodeTrailer(empty, int64(len(empty))); err != nil || len(e) != 0 || len(empty) != FooterSize {
		t.Fatalf("empty pack: %v %d", err, len(empty))
	}
}

func TestTrailerRejects(t *testing.T) {
	p := build(t, []byte("hello"), []byte("world"))
	cases := map[string]func([]byte) []byte{
		"magic":   func(b []byte) []byte { b[len(b)-1] ^= 1; return b },
		"version": func(b []byte) []byte { b[len(b)-8] = 9; return b },
		"count":   func(b []byte) []byte { b[len(b)-12]++; return b },
		"offset":  func(b []byte) []byte { b[5+5+34]++; return b },
		"kind":    func(b []byte) []byte { b[10] = 0; return b },
		"short":   func(b []byte) []byte { return b[3:] },
	}
	for name, mod := range cases {
		b := mod(bytes.Clone(p))
		if _, err := DecodeTrailer(b, int64(len(b))); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestKey(t *testing.T) {
	id := Sum([]byte("x"))
	k := Key(blob.ClassMeta, id)
	c, got, err := ParseKey(k)
	if err != nil || c != blob.ClassMeta || got != id || k[:8] != "meta/"+id.String()[:2]+"/" {
		t.Fatalf("%s: %v", k, err)
	}
	for _, bad := range []string{"data/xx/" + id.String(), "foo/" + id.String(), "data/" + id.String()} {
		if _, _, err := ParseKey(bad); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
}

func FuzzDecodeTrailer(f *testing.F) {
	f.Add(build(f, []byte("a"), []byte("bc")))
	f.Add(build(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := DecodeTrailer(b, int64(len(b)))
		if err != nil {
			return
		}
		// What decodes re-encodes to the same trailer.
		tail := EncodeTrailer(entries)
		if !bytes.HasSuffix(b, tail) {
			t.Fatal("trailer does not re-encode")
		}
		for _, e := range entries {
			_ = b[e.Offset : e.Offset+e.Length]
		}
	})
}
