package pg

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// DefaultBlockSize is BLCKSZ of a default build: the data page size.
const DefaultBlockSize = 8192

// PageHeaderSize is sizeof(PageHeaderData).
const PageHeaderSize = 24

// PageLayoutVersion is PG_PAGE_LAYOUT_VERSION, unchanged since 8.3.
const PageLayoutVersion = 4

// Page header flag bits (pd_flags).
const (
	PDHasFreeLines = 0x0001
	PDPageFull     = 0x0002
	PDAllVisible   = 0x0004
	// PDValidFlagBits are all the bits PostgreSQL defines; any other bit set
	// marks a damaged header.
	PDValidFlagBits = 0x0007
)

// maxAlign is MAXIMUM_ALIGNOF on the 64-bit machines tidemark runs on.
const maxAlign = 8

// PageHeader is the header at the start of every data page (PageHeaderData).
type PageHeader struct {
	LSN             LSN    // pd_lsn: end of the WAL record that last changed the page
	Checksum        uint16 // pd_checksum
	Flags           uint16 // pd_flags
	Lower           uint16 // pd_lower: end of the line pointer array
	Upper           uint16 // pd_upper: start of tuple space; 0 on a new page
	Special         uint16 // pd_special: start of the access method's special space
	PageSizeVersion uint16 // pd_pagesize_version: page size | layout version
	PruneXID        uint32 // pd_prune_xid
}

// PageSize returns the page size recorded in the header.
func (h PageHeader) PageSize() int { return int(h.PageSizeVersion & 0xFF00) }

// LayoutVersion returns the page layout version recorded in the header.
func (h PageHeader) LayoutVersion() int { return int(h.PageSizeVersion & 0x00FF) }

// ErrShortPage is returned (wrapped) for a page shorter than its header.
var ErrShortPage = errors.New("short page")

// ParsePageHeader decodes the header of a data page.
func ParsePageHeader(page []byte) (PageHeader, error) {
	if len(page) < PageHeaderSize {
		return PageHeader{}, fmt.Errorf("%w: %d bytes, want at least %d", ErrShortPage, len(page), PageHeaderSize)
	}
	le := binary.LittleEndian
	return PageHeader{
		LSN:             PageLSN(page),
		Checksum:        le.Uint16(page[8:]),
		Flags:           le.Uint16(page[10:]),
		Lower:           le.Uint16(page[12:]),
		Upper:           le.Uint16(page[14:]),
		Special:         le.Uint16(page[16:]),
		PageSizeVersion: le.Uint16(page[18:]),
		PruneXID:        le.Uint32(page[20:]),
	}, nil
}

// PageLSN returns pd_lsn without decoding the rest of the header; change
// detection calls it for every page. pd_lsn is stored as two 32-bit halves,
// high first (PageXLogRecPtr), not as one 64-bit integer. The page must be at
// least 8 bytes long.
func PageLSN(page []byte) LSN {
	le := binary.LittleEndian
	return LSN(uint64(le.Uint32(page[0:]))<<32 | uint64(le.Uint32(page[4:])))
}

// PageAllVisible reports whether page is a heap page (no special space)
// with PD_ALL_VISIBLE set in pd_flags. VACUUM sets that flag with a WAL
// record that names the page but, without data checksums and wal_log_hints,
// leaves its LSN alone (visibilitymap_set: the heap page's LSN is stamped
// only when XLogHintBitIsNeeded), so the flag is the one change to a page
// that its LSN does not show and that recovery does not redo from an
// earlier start point.
func PageAllVisible(page []byte) bool {
	if len(page) < PageHeaderSize {
		return false
	}
	le := binary.LittleEndian
	return int(le.Uint16(page[16:])) == len(page) && le.Uint16(page[10:])&0x0004 != 0
}

// VMHeapBlocksPerPage is how many heap blocks one page of a visibility map
// covers: two bits per heap block after the page header
// (HEAPBLOCKS_PER_PAGE in visibilitymap.c).
func VMHeapBlocksPerPage(blockSize int) uint32 { return uint32(blockSize-PageHeaderSize) * 4 }

// PageIsNew reports whether the page has never been initialised
// (PageIsNew: pd_upper is 0). Such a page carries no checksum; it is valid
// only if it is entirely zero, which VerifyPage checks.
func PageIsNew(page []byte) bool {
	return len(page) >= PageHeaderSize && page[14] == 0 && page[15] == 0
}

// PageIsZero reports whether every byte of page is zero.
func PageIsZero(page []byte) bool {
	// Eight bytes at a time: this runs on every new page of a backup.
	for len(page) >= 64 {
		le := binary.LittleEndian
		if le.Uint64(page[0:])|le.Uint64(page[8:])|le.Uint64(page[16:])|le.Uint64(page[24:])|
			le.Uint64(page[32:])|le.Uint64(page[40:])|le.Uint64(page[48:])|le.Uint64(page[56:]) != 0 {
			return false
		}
		page = page[64:]
	}
	for _, c := range page {
		if c != 0 {
			return false
		}
	}
	return true
}

// checksumBaseOffsets are the initial states of the 32 parallel FNV-1a
// sums (checksumBaseOffsets in src/include/storage/checksum_impl.h).
var checksumBaseOffsets = [nSums]uint32{
	0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A,
	0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
	0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
	0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
	0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE,
	0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
	0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
	0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
}

const (
	nSums    = 32
	fnvPrime = 16777619
	rowBytes = nSums * 4
)

// PageChecksum computes the data checksum PostgreSQL stores in pd_checksum
// (pg_checksum_page): 32 interleaved FNV-1a-style sums over the page read as
// 32-bit words with pd_checksum taken as zero, two extra rounds of zeros,
// the sums xor-folded, the block number mixed in, then reduced to 1..65535.
//
// blkno is the block's number within the relation, not within the segment
// file: block b of segment file n is n*RelSegSize + b (see RelationBlock).
// len(page) must be the cluster's block size, a multiple of 128 bytes;
// PageChecksum panics otherwise, because a wrong length is a programming
// error, not bad data.
func PageChecksum(page []byte, blkno uint32) uint16 {
	if len(page) < rowBytes || len(page)%rowBytes != 0 {
		panic(fmt.Sprintf("pg.PageChecksum: page length %d is not a multiple of %d", len(page), rowBytes))
	}
	return uint16((checksumBlock(page)^blkno)%65535 + 1)
}

// checksumBlock is pg_checksum_block. The 32 sums live in an array the
// compiler keeps on the stack; each row of 128 bytes updates them all. The
// sums are independent chains, so the multiplies of one row overlap in the
// pipeline; that, not SIMD, is where the speed comes from.
func checksumBlock(page []byte) uint32 {
	var s [nSums]uint32 = checksumBaseOffsets
	le := binary.LittleEndian

	// Row 0 holds pd_checksum in the low half of word 2; the checksum is
	// computed as if it were zero.
	row := page[:rowBytes:rowBytes]
	for j := 0; j < nSums; j++ {
		v := le.Uint32(row[4*j:])
		if j == 2 {
			v &= 0xFFFF0000
		}
		t := s[j] ^ v
		s[j] = t*fnvPrime ^ t>>17
	}
	for off := rowBytes; off+rowBytes <= len(page); off += rowBytes {
		row := page[off : off+rowBytes : off+rowBytes]
		mixRow(&s, row)
	}
	var zero [rowBytes]byte
	mixRow(&s, zero[:])
	mixRow(&s, zero[:])
	var r uint32
	for _, v := range s {
		r ^= v
	}
	return r
}

// mixRow folds one 128-byte row into the sums. It is unrolled by hand: Go
// does not unroll loops, and the loop overhead would otherwise cost as much
// as the arithmetic.
func mixRow(s *[nSums]uint32, row []byte) {
	_ = row[rowBytes-1]
	le := binary.LittleEndian
	var t uint32
	t = s[0] ^ le.Uint32(row[0:])
	s[0] = t*fnvPrime ^ t>>17
	t = s[1] ^ le.Uint32(row[4:])
	s[1] = t*fnvPrime ^ t>>17
	t = s[2] ^ le.Uint32(row[8:])
	s[2] = t*fnvPrime ^ t>>17
	t = s[3] ^ le.Uint32(row[12:])
	s[3] = t*fnvPrime ^ t>>17
	t = s[4] ^ le.Uint32(row[16:])
	s[4] = t*fnvPrime ^ t>>17
	t = s[5] ^ le.Uint32(row[20:])
	s[5] = t*fnvPrime ^ t>>17
	t = s[6] ^ le.Uint32(row[24:])
	s[6] = t*fnvPrime ^ t>>17
	t = s[7] ^ le.Uint32(row[28:])
	s[7] = t*fnvPrime ^ t>>17
	t = s[8] ^ le.Uint32(row[32:])
	s[8] = t*fnvPrime ^ t>>17
	t = s[9] ^ le.Uint32(row[36:])
	s[9] = t*fnvPrime ^ t>>17
	t = s[10] ^ le.Uint32(row[40:])
	s[10] = t*fnvPrime ^ t>>17
	t = s[11] ^ le.Uint32(row[44:])
	s[11] = t*fnvPrime ^ t>>17
	t = s[12] ^ le.Uint32(row[48:])
	s[12] = t*fnvPrime ^ t>>17
	t = s[13] ^ le.Uint32(row[52:])
	s[13] = t*fnvPrime ^ t>>17
	t = s[14] ^ le.Uint32(row[56:])
	s[14] = t*fnvPrime ^ t>>17
	t = s[15] ^ le.Uint32(row[60:])
	s[15] = t*fnvPrime ^ t>>17
	t = s[16] ^ le.Uint32(row[64:])
	s[16] = t*fnvPrime ^ t>>17
	t = s[17] ^ le.Uint32(row[68:])
	s[17] = t*fnvPrime ^ t>>17
	t = s[18] ^ le.Uint32(row[72:])
	s[18] = t*fnvPrime ^ t>>17
	t = s[19] ^ le.Uint32(row[76:])
	s[19] = t*fnvPrime ^ t>>17
	t = s[20] ^ le.Uint32(row[80:])
	s[20] = t*fnvPrime ^ t>>17
	t = s[21] ^ le.Uint32(row[84:])
	s[21] = t*fnvPrime ^ t>>17
	t = s[22] ^ le.Uint32(row[88:])
	s[22] = t*fnvPrime ^ t>>17
	t = s[23] ^ le.Uint32(row[92:])
	s[23] = t*fnvPrime ^ t>>17
	t = s[24] ^ le.Uint32(row[96:])
	s[24] = t*fnvPrime ^ t>>17
	t = s[25] ^ le.Uint32(row[100:])
	s[25] = t*fnvPrime ^ t>>17
	t = s[26] ^ le.Uint32(row[104:])
	s[26] = t*fnvPrime ^ t>>17
	t = s[27] ^ le.Uint32(row[108:])
	s[27] = t*fnvPrime ^ t>>17
	t = s[28] ^ le.Uint32(row[112:])
	s[28] = t*fnvPrime ^ t>>17
	t = s[29] ^ le.Uint32(row[116:])
	s[29] = t*fnvPrime ^ t>>17
	t = s[30] ^ le.Uint32(row[120:])
	s[30] = t*fnvPrime ^ t>>17
	t = s[31] ^ le.Uint32(row[124:])
	s[31] = t*fnvPrime ^ t>>17
}

// RelationBlock returns the relation-level block number of block b of
// relation segment file seg (the ".N" suffix), which is what page checksums
// mix in.
func RelationBlock(seg, b, relSegSize uint32) uint32 { return seg*relSegSize + b }

// PageChecksumError reports a page whose stored checksum does not match its
// content.
type PageChecksumError struct {
	Block            uint32 // relation block number
	Stored, Computed uint16
}

func (e *PageChecksumError) Error() string {
	return fmt.Sprintf("page %d: checksum mismatch: stored %d, computed %d", e.Block, e.Stored, e.Computed)
}

// Is makes the error match ErrPageInvalid.
func (e *PageChecksumError) Is(target error) bool { return target == ErrPageInvalid }

// PageHeaderError reports a page whose header could not have been written by
// PostgreSQL (the checks of PageIsVerified), or an uninitialised page that is
// not all zeros.
type PageHeaderError struct {
	Block  uint32
	Reason string
}

func (e *PageHeaderError) Error() string { return fmt.Sprintf("page %d: %s", e.Block, e.Reason) }

// Is makes the error match ErrPageInvalid.
func (e *PageHeaderError) Is(target error) bool { return target == ErrPageInvalid }

// ErrPageInvalid is matched by *PageChecksumError and *PageHeaderError.
var ErrPageInvalid = errors.New("invalid data page")

// VerifyPage checks a data page the way PostgreSQL does when it reads one
// (PageIsVerified): a new page (pd_upper 0) must be all zeros and has no
// checksum; any other page must have a sane header and, when checksums is
// true, a matching checksum. blkno is the relation-level block number. It
// returns nil, a *PageChecksumError (preferred when both fail, since it is
// the stronger evidence) or a *PageHeaderError. It does not allocate on
// success.
func VerifyPage(page []byte, blkno uint32, checksums bool) error {
	if len(page) < rowBytes || len(page)%rowBytes != 0 {
		return &PageHeaderError{Block: blkno, Reason: fmt.Sprintf("page length %d is not a block size", len(page))}
	}
	if PageIsNew(page) {
		if PageIsZero(page) {
			return nil
		}
		return &PageHeaderError{Block: blkno, Reason: "pd_upper is 0 but the page is not all zeros"}
	}
	if checksums {
		stored := binary.LittleEndian.Uint16(page[8:])
		if computed := PageChecksum(page, blkno); computed != stored {
			return &PageChecksumError{Block: blkno, Stored: stored, Computed: computed}
		}
	}
	if reason := pageHeaderInsane(page); reason != "" {
		return &PageHeaderError{Block: blkno, Reason: reason}
	}
	return nil
}

func pageHeaderInsane(page []byte) string {
	le := binary.LittleEndian
	flags := le.Uint16(page[10:])
	lower, upper, special := le.Uint16(page[12:]), le.Uint16(page[14:]), le.Uint16(page[16:])
	switch {
	case flags&^PDValidFlagBits != 0:
		return fmt.Sprintf("pd_flags %#04x has undefined bits", flags)
	case lower > upper:
		return fmt.Sprintf("pd_lower %d is above pd_upper %d", lower, upper)
	case upper > special:
		return fmt.Sprintf("pd_upper %d is above pd_special %d", upper, special)
	case int(special) > len(page):
		return fmt.Sprintf("pd_special %d is beyond the %d-byte page", special, len(page))
	case special%maxAlign != 0:
		return fmt.Sprintf("pd_special %d is not %d-byte aligned", special, maxAlign)
	}
	return ""
}
