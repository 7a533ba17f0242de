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
			got, err := ExpandPatch([]byte("head"), enc)
			if err != nil {
				t.Fatal(err)
			}
			if string(got[:4]) != "head" || !bytes.Equal(got[4:], pages) {
				t.Fatalf("block size %d, %d pages: the expanded pages differ", bs, n)
			}
			// Any run of pages, read or XORed onto other bytes, from the
			// runs alone.
			var pr PatchRuns
			if err := pr.Parse(enc); err != nil || pr.Pages() != n || pr.BlockSize() != bs {
				t.Fatalf("Parse: %v, %d pages of %d", err, pr.Pages(), pr.BlockSize())
			}
			from := r.IntN(n)
			k := 1 + r.IntN(n-from)
			want := pages[from*bs : (from+k)*bs]
			got = bytes.Repeat([]byte{0xa5}, k*bs)
			pr.Read(got, from)
			if !bytes.Equal(got, want) {
				t.Fatalf("Read of pages [%d, %d) differs", from, from+k)
			}
			onto := deltaPages(r, k, bs)
			xored := bytes.Clone(onto)
			pr.XOR(xored, from)
			for i := range xored {
				if xored[i] != onto[i]^want[i] {
					t.Fatalf("XOR of pages [%d, %d) differs at byte %d", from, from+k, i)
				}
			}
			// Stored sparsely: what a run holds are the page's bytes but
			// its leading and trailing zeros and its stretches of
			// patchGapMin zeros or more, and each run costs at most six
			// bytes of header.
			data, runs := keptBytes(pages, bs)
			if len(enc) < data || len(enc) > data+9+3*n+6*runs {
				t.Fatalf("%d bytes for %d pages whose runs hold %d bytes in %d runs", len(enc), n, data, runs)
			}
		}
	}
}

// keptBytes counts the bytes the runs of pages hold by the rule
// AppendPatchRuns follows, and the runs.
func keptBytes(pages []byte, bs int) (data, runs int) {
	for p := 0; p < len(pages); p += bs {
		page := pages[p : p+bs]
		first, last := -1, -1
		for i, c := range page {
			if c != 0 {
				if first < 0 {
					first = i
				}
				last = i
			}
		}
		if first < 0 {
			continue
		}
		data += last + 1 - first
		runs++
		zeros := 0
		for _, c := range page[first : last+1] {
			if c == 0 {
				zeros++
				continue
			}
			if zeros >= patchGapMin {
				data -= zeros
				runs++
			}
			zeros = 0
		}
	}
	return data, runs
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
		// 2^51 pages of 8 KiB: 2^64 bytes, 0 in 64-bit arithmetic.
		{"a page count that overflows", "page count", []byte{0x80, 0x40, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x04, 0}},
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
	// Small seeds: the fuzzer minimizes each new input it finds, and
	// inputs of tens of kilobytes (four pages of 8 KiB) kept its workers
	// minimizing for most of a run.
	f.Add(AppendPatchRuns(nil, 256, deltaPages(r, 2, 256)))
	f.Add(AppendPatchRuns(nil, 1024, deltaPages(r, 1, 1024)))
	f.Add([]byte{0x80, 0x40, 1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ExpandPatch(nil, b)
		if err != nil {
			return
		}
		var pr PatchRuns
		if err := pr.Parse(b); err != nil {
			t.Fatalf("expanded, but Parse says %v", err)
		}
		n, bs := pr.Pages(), pr.BlockSize()
		if len(got) != n*bs || len(got) > blob.SlotSize {
			t.Fatalf("expanded to %d bytes; %d pages of %d", len(got), n, bs)
		}
		// Whatever bytes expanded, the encoder's own form of the pages
		// expands to the same pages.
		again, err := ExpandPatch(nil, AppendPatchRuns(nil, bs, got))
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("re-encoded pages expand differently: %v", err)
		}
	})
}
