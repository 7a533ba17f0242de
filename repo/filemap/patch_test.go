package filemap

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

// deltaPages makes n pages of bs bytes shaped like the XOR of two versions
// of a heap page: mostly zeros, with runs of changed bytes of every length
// at every offset, gaps of 1 to 20 zeros inside them, and a first and
// last byte that are sometimes set.
func deltaPages(r *rand.Rand, n, bs int) []byte {
	b := make([]byte, n*bs)
	for p := range n {
		page := b[p*bs : (p+1)*bs]
		switch r.IntN(5) {
		case 0: // an unchanged page
			continue
		case 1: // a page stored whole: nothing but its hole is zero
			for i := range page {
				if i < 200 || i > bs/2 {
					page[i] = byte(r.IntN(255) + 1)
				}
			}
			continue
		}
		for range r.IntN(12) {
			off, ln := r.IntN(bs), 1+r.IntN(300)
			for i := off; i < min(bs, off+ln); i++ {
				if r.IntN(10) > 0 {
					page[i] = byte(r.IntN(256))
				}
			}
		}
		if r.IntN(3) == 0 {
			page[0] = 1
		}
		if r.IntN(3) == 0 {
			page[bs-1] = 0xff
		}
	}
	return b
}

func TestPatchRunsRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, bs := range []int{1024, 8192, 32768} {
		for range 50 {
			n := 1 + r.IntN(blob.SlotSize/bs)
			pages := deltaPages(r, n, bs)
			enc := AppendPatchRuns([]byte("x"), bs, pages)
			if enc[0] != 'x' {
				t.Fatal("AppendPatchRuns did not append")
			}
			enc = enc[1:]
			if again := AppendPatchRuns(nil, bs, pages); !bytes.Equal(again, enc) {
				t.Fatal("the same pages encoded to other bytes")
			}
			if gn, gbs, err := PatchPages(enc); err != nil || gn != n || gbs != bs {
				t.Fatalf("PatchPages: %d pages of %d, %v; want %d of %d", gn, gbs, err, n, bs)
			}
			got, err := ExpandPatch([]byte("head"), enc)
			if err != nil {
				t.Fatal(err)
			}
			if string(got[:4]) != "head" || !bytes.Equal(got[4:], pages) {
				t.Fatalf("block size %d, %d pages: the expanded pages differ", bs, n)
			}
			// Stored sparsely: the encoding is smaller than the pages'
			// bytes that are not zero plus a few bytes a run.
			nonzero := len(pages) - bytes.Count(pages, []byte{0})
			if len(enc) > nonzero+len(pages)/patchGapMin/2+16 {
				t.Fatalf("%d bytes for %d pages with %d bytes that are not zero", len(enc), n, nonzero)
			}
		}
	}
}

func TestPatchRunsZeroPages(t *testing.T) {
	pages := make([]byte, 3*8192)
	enc := AppendPatchRuns(nil, 8192, pages)
	if len(enc) != 2+1+1+3 { // block size (2), count, header length, a zero run count per page
		t.Fatalf("three zero pages encode to %d bytes: %x", len(enc), enc)
	}
	got, err := ExpandPatch(nil, enc)
	if err != nil || !bytes.Equal(got, pages) {
		t.Fatalf("%v", err)
	}
}

// TestExpandPatchRefuses: every malformed blob is refused with ErrInvalid,
// and none expands past a slot.
func TestExpandPatchRefuses(t *testing.T) {
	pages := deltaPages(rand.New(rand.NewPCG(3, 4)), 16, 8192)
	good := AppendPatchRuns(nil, 8192, pages)
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"empty", "block size", nil},
		{"block size 0", "block size", []byte{0, 1, 0}},
		{"block size 3000", "block size", []byte{0xb8, 0x17, 1, 0}},
		{"no pages", "page count", []byte{0x80, 0x40, 0}},
		{"past a slot", "page count", []byte{0x80, 0x40, 129}},
		{"header length past the end", "header length", []byte{0x80, 0x40, 1, 0x7f, 0}},
		{"truncated headers", "header length", good[:6]},
		{"a byte short", "a run past the blob's bytes", good[:len(good)-1]},
		{"a byte long", "left over", append(append([]byte{}, good...), 7)},
		{"run past the page", "a run past the page", []byte{0x80, 0x40, 1, 4, 1, 0xff, 0x3f, 2, 'x', 'y'}},
		{"empty run", "a run past the page", []byte{0x80, 0x08, 1, 3, 1, 0, 0}},
		{"run count too high", "run count", []byte{0x80, 0x08, 1, 2, 0x81, 0x08}},
		{"headers short of the pages", "run count", []byte{0x80, 0x08, 2, 1, 0}},
	} {
		got, err := ExpandPatch([]byte("keep"), tc.b)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, err, tc.want)
		}
		if string(got) != "keep" {
			t.Errorf("%s: dst changed to %q", tc.name, got)
		}
	}
}

func FuzzExpandPatch(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	f.Add(AppendPatchRuns(nil, 8192, deltaPages(r, 4, 8192)))
	f.Add(AppendPatchRuns(nil, 1024, deltaPages(r, 9, 1024)))
	f.Add([]byte{0x80, 0x40, 1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ExpandPatch(nil, b)
		if err != nil {
			return
		}
		n, bs, err := PatchPages(b)
		if err != nil || len(got) != n*bs || len(got) > blob.SlotSize {
			t.Fatalf("expanded to %d bytes; header says %d pages of %d (%v)", len(got), n, bs, err)
		}
		// Whatever bytes expanded, the encoder's own form of the pages
		// expands to the same pages.
		again, err := ExpandPatch(nil, AppendPatchRuns(nil, bs, got))
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("re-encoded pages expand differently: %v", err)
		}
	})
}
