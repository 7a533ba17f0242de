package filemap

import (
	"encoding/binary"
	"math/bits"
	"slices"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

// A patch-runs blob (blob.KindPatchRuns) holds the pages of a patch as the
// runs of their bytes that are not zero, and nothing of the zeros between:
//
//	uvarint block size
//	uvarint page count n
//	uvarint h, the bytes of the run headers that follow
//	n times: uvarint run count k, then k times (uvarint gap, uvarint length)
//	the bytes of every run, page by page, run by run
//
// gap counts the zero bytes before a run, from the end of the one before
// it (or the page's start); bytes after the last run are zeros. A page
// stored as a delta is the XOR of two versions of a page, which differ in
// a few dozen to a few thousand of its bytes: stored whole, a restore
// decompressed and hashed the zeros too (docs/format.md §5). The run
// headers come before the bytes so that each compresses among its own
// kind; h lets a reader walk both in one pass.

// patchGapMin is the shortest run of zeros that ends a run. The XOR of a
// heap page whose tuples moved has a zero byte every few bytes: ending
// runs at 4 zeros made 3 times the runs of 16 for 18% fewer bytes, and a
// restore's expanding them cost more than the bytes saved (560 MiB of the
// restore benchmark's patches: 0.64 s to decompress, hash and expand
// against 0.52 s; whole pages, 0.82 s).
const patchGapMin = 16

// PatchPages reports how many pages a patch-runs blob holds, and their
// block size, from its first bytes.
func PatchPages(src []byte) (pages, blockSize int, err error) {
	bs, n, _, err := patchHeader(src)
	return n, bs, err
}

// AppendPatchRuns appends the patch-runs encoding of pages, whole pages of
// blockSize bytes, to dst. The same pages always encode to the same bytes.
func AppendPatchRuns(dst []byte, blockSize int, pages []byte) []byte {
	n := len(pages) / blockSize
	var hdr []byte
	type run struct{ off, n int }
	var runs []run
	for p := range n {
		page := pages[p*blockSize : (p+1)*blockSize]
		first := len(runs)
		for i := 0; ; {
			i = nextNonZero(page, i)
			if i == len(page) {
				break
			}
			j := i + 1
			for j < len(page) {
				z := nextNonZero(page, j)
				if z-j >= patchGapMin || z == len(page) {
					break
				}
				j = nextZero(page, z)
			}
			runs = append(runs, run{p*blockSize + i, j - i})
			i = j
		}
		hdr = binary.AppendUvarint(hdr, uint64(len(runs)-first))
		end := p * blockSize
		for _, x := range runs[first:] {
			hdr = binary.AppendUvarint(hdr, uint64(x.off-end))
			hdr = binary.AppendUvarint(hdr, uint64(x.n))
			end = x.off + x.n
		}
	}
	dst = binary.AppendUvarint(dst, uint64(blockSize))
	dst = binary.AppendUvarint(dst, uint64(n))
	dst = binary.AppendUvarint(dst, uint64(len(hdr)))
	dst = append(dst, hdr...)
	for _, x := range runs {
		dst = append(dst, pages[x.off:x.off+x.n]...)
	}
	return dst
}

// nextNonZero returns the index of the first byte of b at or after i that
// is not zero, or len(b); eight bytes at a time.
func nextNonZero(b []byte, i int) int {
	for ; i+8 <= len(b); i += 8 {
		if w := binary.LittleEndian.Uint64(b[i:]); w != 0 {
			return i + bits.TrailingZeros64(w)/8
		}
	}
	for ; i < len(b); i++ {
		if b[i] != 0 {
			return i
		}
	}
	return i
}

// nextZero returns the index of the first zero byte of b at or after i, or
// len(b); eight bytes at a time.
func nextZero(b []byte, i int) int {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		// The lowest byte flagged is the first zero byte (flags above a
		// zero byte may be false, never those below it).
		if z := (w - lo) &^ w & hi; z != 0 {
			return i + bits.TrailingZeros64(z)/8
		}
	}
	for ; i < len(b) && b[i] != 0; i++ {
	}
	return i
}

// patchHeader reads a patch-runs blob's block size and page count, and
// returns the offset of its header length.
func patchHeader(src []byte) (bs, n, off int, err error) {
	v, k := binary.Uvarint(src)
	if k <= 0 || v == 0 || v > MaxBlockSize || v&(v-1) != 0 {
		return 0, 0, 0, invalidf("patch runs: block size")
	}
	bs, off = int(v), k
	v, k = binary.Uvarint(src[off:])
	if k <= 0 || v == 0 || v*uint64(bs) > blob.SlotSize {
		return 0, 0, 0, invalidf("patch runs: page count")
	}
	return bs, int(v), off + k, nil
}

// ExpandPatch appends the pages a patch-runs blob holds to dst: at most
// one slot (blob.SlotSize) of bytes, whatever src says. On an error dst
// is returned as it was.
func ExpandPatch(dst, src []byte) ([]byte, error) {
	bs, n, off, err := patchHeader(src)
	if err != nil {
		return dst, err
	}
	h, k := binary.Uvarint(src[off:])
	if k <= 0 || h > uint64(len(src)-off-k) {
		return dst, invalidf("patch runs: header length")
	}
	hdr, data := src[off+k:off+k+int(h)], src[off+k+int(h):]
	start := len(dst)
	dst = slices.Grow(dst, n*bs)[:start+n*bs]
	out := dst[start:]
	clear(out)
	fail := func(format string, args ...any) ([]byte, error) {
		return dst[:start], invalidf("patch runs: "+format, args...)
	}
	for p := range n {
		k, m := binary.Uvarint(hdr)
		if m <= 0 || k > uint64(bs) {
			return fail("page %d: run count", p)
		}
		hdr = hdr[m:]
		pos := p * bs
		end := pos + bs
		for range k {
			gap, m := binary.Uvarint(hdr)
			if m <= 0 {
				return fail("page %d: gap", p)
			}
			hdr = hdr[m:]
			ln, m := binary.Uvarint(hdr)
			if m <= 0 || ln == 0 || gap > uint64(bs) || ln > uint64(bs) || uint64(pos)+gap+ln > uint64(end) {
				return fail("page %d: a run past the page", p)
			}
			hdr = hdr[m:]
			pos += int(gap)
			if int(ln) > len(data) {
				return fail("page %d: a run past the blob's bytes", p)
			}
			copy(out[pos:pos+int(ln)], data[:ln])
			data = data[ln:]
			pos += int(ln)
		}
	}
	if len(hdr) != 0 || len(data) != 0 {
		return fail("%d header and %d run bytes left over", len(hdr), len(data))
	}
	return dst, nil
}
