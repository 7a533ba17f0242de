package pg

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// LSN is a position in the write-ahead log (XLogRecPtr): a byte offset into
// the one 64-bit WAL address space that all timelines share.
type LSN uint64

// InvalidLSN is PostgreSQL's InvalidXLogRecPtr. No record starts at 0 because
// the first page of every segment begins with a header.
const InvalidLSN LSN = 0

// MaxLSN is the largest LSN; timeline history uses it for "not yet ended".
const MaxLSN LSN = ^LSN(0)

// SegNo numbers WAL segments from the start of the address space
// (XLogSegNo): segment n covers [n*segSize, (n+1)*segSize).
type SegNo uint64

// ErrInvalidLSN is returned (wrapped) for text that is not an LSN.
var ErrInvalidLSN = errors.New("invalid LSN")

// ParseLSN parses PostgreSQL's text form of an LSN, "16/B374D848": the high
// and low 32 bits in hexadecimal. Upper- and lower-case digits and zero
// padding of either half (as newer PostgreSQL versions print it) are
// accepted, as by the pg_lsn input function.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("%w %q: want two hexadecimal halves of at most 8 digits like 16/B374D848", ErrInvalidLSN, s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil || hi[0] == '+' || lo[0] == '+' {
		return 0, fmt.Errorf("%w %q: want two hexadecimal halves like 16/B374D848", ErrInvalidLSN, s)
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN as PostgreSQL 13-18 print it ("%X/%X"): upper case,
// no zero padding.
func (l LSN) String() string {
	var b [17]byte
	return string(l.appendText(b[:0]))
}

// appendText appends the text form to b without allocating when b has room.
func (l LSN) appendText(b []byte) []byte {
	start := len(b)
	b = strconv.AppendUint(b, uint64(l)>>32, 16)
	b = append(b, '/')
	b = strconv.AppendUint(b, uint64(l)&0xFFFFFFFF, 16)
	for i := start; i < len(b); i++ {
		if c := b[i]; c >= 'a' && c <= 'f' {
			b[i] = c - 'a' + 'A'
		}
	}
	return b
}

// MarshalText makes an LSN appear in JSON and other text encodings in
// PostgreSQL's form, which is what an operator compares it with.
func (l LSN) MarshalText() ([]byte, error) { return l.appendText(nil), nil }

// UnmarshalText is the inverse of MarshalText.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// IsValid reports whether l is not InvalidLSN.
func (l LSN) IsValid() bool { return l != InvalidLSN }

// Add returns l advanced by n bytes. It saturates at MaxLSN rather than
// wrapping, so that a corrupt length can never make a position go backwards.
func (l LSN) Add(n uint64) LSN {
	if uint64(MaxLSN-l) < n {
		return MaxLSN
	}
	return l + LSN(n)
}

// Sub returns the number of bytes from o to l, negative when l is before o
// (pg_wal_lsn_diff). The result saturates at the int64 range.
func (l LSN) Sub(o LSN) int64 {
	if l >= o {
		d := uint64(l - o)
		if d > 1<<63-1 {
			return 1<<63 - 1
		}
		return int64(d)
	}
	d := uint64(o - l)
	if d > 1<<63 {
		return -1 << 63
	}
	return -int64(d)
}

// Segment returns the number of the segment that contains the byte at l
// (XLByteToSeg). segSize must be a valid WAL segment size.
func (l LSN) Segment(segSize uint32) SegNo { return SegNo(uint64(l) / uint64(segSize)) }

// PrevSegment returns the segment that holds the byte just before l
// (XLByteToPrevSeg). It is the right question for an end position: a record
// ending exactly at a segment boundary lives in the earlier segment, so a
// backup whose stop LSN is a boundary needs that segment and not the next.
func (l LSN) PrevSegment(segSize uint32) SegNo {
	if l == 0 {
		return 0
	}
	return SegNo(uint64(l-1) / uint64(segSize))
}

// SegmentOffset returns l's offset within its segment (XLogSegmentOffset).
func (l LSN) SegmentOffset(segSize uint32) uint32 { return uint32(uint64(l) & uint64(segSize-1)) }

// PageStart returns the start of the WAL page (of pageSize bytes, a power of
// two) that contains l.
func (l LSN) PageStart(pageSize uint32) LSN { return l &^ LSN(pageSize-1) }

// Start returns the LSN of the first byte of segment s
// (XLogSegNoOffsetToRecPtr with offset 0).
func (s SegNo) Start(segSize uint32) LSN { return LSN(uint64(s) * uint64(segSize)) }
