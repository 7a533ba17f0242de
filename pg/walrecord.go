package pg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// WAL record layout, from PostgreSQL's access/xlogrecord.h and
// access/xact.h (unchanged from 13 to 18 except the image flags noted).
const (
	WALRecordHeaderSize = 24 // SizeOfXLogRecord
	RMXLOG              = 0  // RM_XLOG_ID
	RMXact              = 1  // RM_XACT_ID
	XactOpMask          = 0x70
	XactCommit          = 0x00
	XactAbort           = 0x20
	XactCommitPrepared  = 0x30
	XactAbortPrepared   = 0x40
	XLOGSwitch          = 0x40 // XLOG_SWITCH: the rest of the segment is padding
	XLOGNoop            = 0x20 // XLOG_NOOP

	BlockIDDataShort   = 255 // XLR_BLOCK_ID_DATA_SHORT: main data, 1-byte length
	BlockIDDataLong    = 254 // XLR_BLOCK_ID_DATA_LONG: main data, 4-byte length
	BlockIDOrigin      = 253
	BlockIDTopLevelXID = 252
	MaxBlockID         = 32

	bkpBlockHasImage = 0x10
	bkpBlockSameRel  = 0x80
)

// pgEpoch is where TimestampTz counts microseconds from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// TimestampTz converts PostgreSQL's TimestampTz (microseconds since
// 2000-01-01 UTC) to a time.
func TimestampTz(us int64) time.Time { return pgEpoch.Add(time.Duration(us) * time.Microsecond) }

// ToTimestampTz is the inverse of TimestampTz.
func ToTimestampTz(t time.Time) int64 { return int64(t.Sub(pgEpoch) / time.Microsecond) }

var errWALEnd = errors.New("end of valid WAL")

// LastCommitTime returns the timestamp of the last commit or abort record
// that begins in a WAL segment (its whole plaintext): the latest time a
// recovery_target_time can be reached with the WAL up to this segment.
// found is false when the segment has none. Records are CRC-checked;
// scanning stops at the first invalid one, as recovery would.
func LastCommitTime(seg []byte) (t time.Time, found bool, err error) {
	hdr, err := ParseSegmentHeader(seg)
	if err != nil {
		return t, false, err
	}
	pageSize := int(hdr.BlockSize)
	segSize := int(hdr.SegSize)
	if pageSize < WALLongPageHeaderSize*2 || len(seg) != segSize || segSize%pageSize != 0 {
		return t, false, fmt.Errorf("WAL segment of %d bytes with %d-byte pages and segment size %d", len(seg), pageSize, segSize)
	}
	r := walReader{seg: seg, pageSize: pageSize, base: hdr.PageAddr, major: hdr.Major}
	// Skip the tail of a record that began in the previous segment.
	pos := WALLongPageHeaderSize + int(align8(uint64(hdr.RemLen)))
	if hdr.RemLen > 0 {
		// A continuation longer than the first page's payload spans
		// pages: follow it through the page headers.
		if pos, err = r.skip(WALLongPageHeaderSize, int(hdr.RemLen)); err != nil {
			return t, false, nil
		}
		pos = int(align8(uint64(pos)))
	}
	for {
		rec, next, err := r.record(pos)
		if err != nil {
			if errors.Is(err, errWALEnd) {
				return t, found, nil
			}
			return t, found, err
		}
		if rec.rmid == RMXLOG && rec.info&0xF0 == XLOGSwitch {
			return t, found, nil
		}
		if rec.rmid == RMXact {
			switch rec.info & XactOpMask {
			case XactCommit, XactAbort, XactCommitPrepared, XactAbortPrepared:
				if main := rec.mainData(); len(main) >= 8 {
					us := int64(binary.LittleEndian.Uint64(main))
					t, found = TimestampTz(us), true
				}
			}
		}
		pos = next
	}
}

func align8(n uint64) uint64 { return (n + 7) &^ 7 }

// walReader reads records out of one segment's pages.
type walReader struct {
	seg      []byte
	pageSize int
	base     LSN
	major    int
}

// headerSize is the page header length at a page-aligned offset.
func (r *walReader) headerSize(pageOff int) int {
	if pageOff == 0 {
		return WALLongPageHeaderSize
	}
	return WALShortPageHeaderSize
}

// checkPage validates the header of the page at pageOff: a page left over
// from a recycled segment or never written ends the valid WAL.
func (r *walReader) checkPage(pageOff int) error {
	h, err := ParseWALPageHeader(r.seg[pageOff:])
	if err != nil || h.PageAddr != r.base.Add(uint64(pageOff)) {
		return errWALEnd
	}
	return nil
}

// skip follows n bytes of record data from pos (an offset in the segment
// just past a page header or inside a page) across page headers and returns
// the offset after them.
func (r *walReader) skip(pos, n int) (int, error) {
	for n > 0 {
		if pos >= len(r.seg) {
			return 0, errWALEnd
		}
		if pos%r.pageSize == 0 {
			if err := r.checkPage(pos); err != nil {
				return 0, err
			}
			pos += r.headerSize(pos)
		}
		room := r.pageSize - pos%r.pageSize
		step := min(room, n)
		pos += step
		n -= step
	}
	return pos, nil
}

// read copies n record bytes starting at pos, across page headers.
func (r *walReader) read(pos, n int, dst []byte) ([]byte, int, error) {
	for n > 0 {
		if pos >= len(r.seg) {
			return dst, 0, errWALEnd
		}
		if pos%r.pageSize == 0 {
			if err := r.checkPage(pos); err != nil {
				return dst, 0, err
			}
			pos += r.headerSize(pos)
		}
		room := r.pageSize - pos%r.pageSize
		step := min(room, n)
		dst = append(dst, r.seg[pos:pos+step]...)
		pos += step
		n -= step
	}
	return dst, pos, nil
}

type walRecord struct {
	raw   []byte
	rmid  uint8
	info  uint8
	major int
}

// record reads the record at pos and returns it with the position of the
// next one. A zero length, a bad CRC or a record running past the segment
// (it continues in the next one) is the end.
func (r *walReader) record(pos int) (walRecord, int, error) {
	if pos%r.pageSize == 0 {
		if pos >= len(r.seg) {
			return walRecord{}, 0, errWALEnd
		}
		if err := r.checkPage(pos); err != nil {
			return walRecord{}, 0, err
		}
		pos += r.headerSize(pos)
	}
	if pos >= len(r.seg) {
		return walRecord{}, 0, errWALEnd
	}
	head, _, err := r.read(pos, 4, nil)
	if err != nil {
		return walRecord{}, 0, err
	}
	total := int(binary.LittleEndian.Uint32(head))
	if total < WALRecordHeaderSize || total > len(r.seg)*4 {
		return walRecord{}, 0, errWALEnd
	}
	raw, next, err := r.read(pos, total, make([]byte, 0, total))
	if err != nil {
		return walRecord{}, 0, err
	}
	crc := crc32.Update(0, castagnoli, raw[WALRecordHeaderSize:])
	crc = crc32.Update(crc, castagnoli, raw[:20])
	if crc != binary.LittleEndian.Uint32(raw[20:24]) {
		return walRecord{}, 0, errWALEnd
	}
	return walRecord{raw: raw, info: raw[16], rmid: raw[17], major: r.major}, int(align8(uint64(next))), nil
}

// mainData returns the record's main data: the headers after XLogRecord
// say how long it is, and it comes last. nil when the headers do not add up.
func (rec walRecord) mainData() []byte {
	b := rec.raw
	pos := WALRecordHeaderSize
	var blockData, mainLen int
	u16 := func() (int, bool) {
		if pos+2 > len(b) {
			return 0, false
		}
		v := int(binary.LittleEndian.Uint16(b[pos:]))
		pos += 2
		return v, true
	}
	for pos < len(b)-blockData {
		id := b[pos]
		pos++
		switch {
		case id == BlockIDDataShort:
			if pos >= len(b) {
				return nil
			}
			mainLen = int(b[pos])
			pos++
			goto done
		case id == BlockIDDataLong:
			if pos+4 > len(b) {
				return nil
			}
			mainLen = int(binary.LittleEndian.Uint32(b[pos:]))
			pos += 4
			goto done
		case id == BlockIDOrigin:
			pos += 2
		case id == BlockIDTopLevelXID:
			pos += 4
		case id <= MaxBlockID:
			if pos >= len(b) {
				return nil
			}
			flags := b[pos]
			pos++
			n, ok := u16()
			if !ok {
				return nil
			}
			blockData += n
			if flags&bkpBlockHasImage != 0 {
				imgLen, ok := u16()
				if !ok {
					return nil
				}
				pos += 2 // hole offset
				if pos >= len(b) {
					return nil
				}
				bimg := b[pos]
				pos++
				blockData += imgLen
				if bimg&0x01 != 0 && imageCompressed(bimg, rec.major) {
					pos += 2 // hole length
				}
			}
			if flags&bkpBlockSameRel == 0 {
				pos += 12 // RelFileLocator
			}
			pos += 4 // block number
		default:
			return nil
		}
	}
done:
	if mainLen == 0 || mainLen > len(b)-WALRecordHeaderSize {
		return nil
	}
	return b[len(b)-mainLen:]
}

// imageCompressed reads the "compressed" bits of bimg_info, which moved in
// PostgreSQL 15 when LZ4 and zstd joined pglz.
func imageCompressed(bimg uint8, major int) bool {
	if major >= 15 {
		return bimg&(0x04|0x08|0x10) != 0
	}
	return bimg&0x02 != 0
}
