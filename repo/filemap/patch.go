package filemap

import (
	"crypto/subtle"
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
// runs at 4 zeros kept 18% fewer bytes than at 16, in so many more runs
// that walking them cost a restore more than the bytes saved (560 MiB of
// the restore benchmark's patches: 0.64 s to decompress, hash and expand
// against 0.52 s; whole pages, 0.82 s).
const patchGapMin = 16

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
	if k <= 0 || v == 0 || v > uint64(blob.SlotSize/bs) {
		return 0, 0, 0, invalidf("patch runs: page count")
	}
	return bs, int(v), off + k, nil
}

// PatchRuns is a patch-runs blob read for its pages: where each page's
// runs are, so that a reader takes or XORs the pages it needs straight
// from the runs, without expanding the blob.
type PatchRuns struct {
	bs    int
	pages []runsAt
	hdr   []byte
	data  []byte
}

// runsAt is where page i's runs are: its run count in hdr, its first run's
// bytes in data.
type runsAt struct{ hdr, data int }

// Parse checks src as a patch-runs blob and makes p read it: every run of
// every page lies in its page and in src, and nothing is left over. p
// keeps src and reuses its own memory from the last Parse.
func (p *PatchRuns) Parse(src []byte) error {
	bs, n, off, err := patchHeader(src)
	if err != nil {
		return err
	}
	h, k := binary.Uvarint(src[off:])
	if k <= 0 || h > uint64(len(src)-off-k) {
		return invalidf("patch runs: header length")
	}
	hdr, data := src[off+k:off+k+int(h)], src[off+k+int(h):]
	p.bs, p.hdr, p.data, p.pages = bs, hdr, data, p.pages[:0]
	hi, di := 0, 0
	for pg := range n {
		p.pages = append(p.pages, runsAt{hi, di})
		k, m := binary.Uvarint(hdr[hi:])
		if m <= 0 || k > uint64(bs) {
			return invalidf("patch runs: page %d: run count", pg)
		}
		hi += m
		pos := 0
		for range k {
			gap, m := binary.Uvarint(hdr[hi:])
			if m <= 0 {
				return invalidf("patch runs: page %d: gap", pg)
			}
			hi += m
			ln, m := binary.Uvarint(hdr[hi:])
			if m <= 0 || ln == 0 || gap > uint64(bs) || ln > uint64(bs) || uint64(pos)+gap+ln > uint64(bs) {
				return invalidf("patch runs: page %d: a run past the page", pg)
			}
			hi += m
			pos += int(gap + ln)
			if int(ln) > len(data)-di {
				return invalidf("patch runs: page %d: a run past the blob's bytes", pg)
			}
			di += int(ln)
		}
	}
	if hi != len(hdr) || di != len(data) {
		return invalidf("patch runs: %d header and %d run bytes left over", len(hdr)-hi, len(data)-di)
	}
	return nil
}

// Pages is the number of pages the blob holds, BlockSize their size.
func (p *PatchRuns) Pages() int     { return len(p.pages) }
func (p *PatchRuns) BlockSize() int { return p.bs }

// each calls fn with each run of pages [from, from+len(dst)/bs) and the
// offset in dst where it goes. Parse checked every number.
func (p *PatchRuns) each(dst []byte, from int, fn func(at int, run []byte)) {
	for i := range len(dst) / p.bs {
		r := p.pages[from+i]
		hdr, di := p.hdr[r.hdr:], r.data
		k, m := binary.Uvarint(hdr)
		hdr = hdr[m:]
		pos := i * p.bs
		for range k {
			gap, m := binary.Uvarint(hdr)
			hdr = hdr[m:]
			ln, m := binary.Uvarint(hdr)
			hdr = hdr[m:]
			pos += int(gap)
			fn(pos, p.data[di:di+int(ln)])
			di += int(ln)
			pos += int(ln)
		}
	}
}

// Read sets dst, whole pages, to pages [from, from+len(dst)/BlockSize)
// of the blob.
func (p *PatchRuns) Read(dst []byte, from int) {
	clear(dst)
	p.each(dst, from, func(at int, run []byte) { copy(dst[at:], run) })
}

// XOR XORs pages [from, from+len(dst)/BlockSize) of the blob onto dst,
// whole pages: only the bytes of their runs, the rest being zeros.
func (p *PatchRuns) XOR(dst []byte, from int) {
	p.each(dst, from, func(at int, run []byte) { subtle.XORBytes(dst[at:at+len(run)], dst[at:at+len(run)], run) })
}

// ExpandPatch appends the pages a patch-runs blob holds to dst: at most
// one slot (blob.SlotSize) of bytes, whatever src says. On an error dst
// is returned as it was.
func ExpandPatch(dst, src []byte) ([]byte, error) {
	var p PatchRuns
	if err := p.Parse(src); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = slices.Grow(dst, p.Pages()*p.bs)[:start+p.Pages()*p.bs]
	p.Read(dst[start:], 0)
	return dst, nil
}
