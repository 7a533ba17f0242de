// Package pgtest builds PostgreSQL's on-disk formats synthetically for unit
// tests of the code that reads them: WAL segments with records that span
// pages and segments, with block references. It is test support, not a
// second writer of those formats: tests against real servers
// (internal/testenv) prove the readers on bytes PostgreSQL itself wrote.
package pgtest

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
)

// WALPageSize is the WAL page size of the segments built here.
const WALPageSize = 8192

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Segment builds a valid PostgreSQL 15 WAL segment of segSize bytes on
// timeline tli holding a large no-op record that spans pages, then one
// commit record per time.
func Segment(tli pg.TimelineID, seg pg.SegNo, segSize uint32, sysid uint64, commits []time.Time) []byte {
	w := NewSegmentWriter(tli, seg, segSize, sysid)
	w.Record(pg.RMXLOG, pg.XLOGNoop, bytes.Repeat([]byte{7}, 3*WALPageSize))
	for _, c := range commits {
		w.Commit(c)
	}
	return w.Bytes()
}

// SegmentWriter lays WAL records out in consecutive segments, with page
// headers and continuation records as PostgreSQL writes them. The zero
// bytes after the last record are the end of the valid WAL.
type SegmentWriter struct {
	buf     []byte // whole segments
	pos     int    // offset in buf of the next byte
	base    pg.LSN // LSN of buf[0]
	tli     pg.TimelineID
	sysid   uint64
	segSize uint32
	major   int
	prev    pg.LSN
	// Overwrite marks the next page header XLP_FIRST_IS_OVERWRITE_CONTRECORD.
	overwrite bool
}

// NewSegmentWriter starts an empty segment of a PostgreSQL 15 cluster.
func NewSegmentWriter(tli pg.TimelineID, seg pg.SegNo, segSize uint32, sysid uint64) *SegmentWriter {
	return NewWALWriter(15, tli, seg, segSize, sysid)
}

// NewWALWriter starts an empty segment of a cluster of the given major
// version (its magic and full-page image flags).
func NewWALWriter(major int, tli pg.TimelineID, seg pg.SegNo, segSize uint32, sysid uint64) *SegmentWriter {
	return &SegmentWriter{buf: make([]byte, segSize), base: seg.Start(segSize), tli: tli, sysid: sysid, segSize: segSize, major: major}
}

// Bytes returns the segments written so far, back to back.
func (w *SegmentWriter) Bytes() []byte { return w.buf }

// Segments returns the segments written so far, each its own slice.
func (w *SegmentWriter) Segments() [][]byte {
	var out [][]byte
	for off := 0; off < len(w.buf); off += int(w.segSize) {
		out = append(out, w.buf[off:off+int(w.segSize)])
	}
	return out
}

// Pos returns the LSN the next record would start at (before alignment).
func (w *SegmentWriter) Pos() pg.LSN { return w.base.Add(uint64(w.pos)) }

// Major returns the version whose WAL the writer writes.
func (w *SegmentWriter) Major() int { return w.major }

// Fill writes no-op records until the next record would start at or
// after to (within a record header of it), so that a test can place a
// record at a boundary.
func (w *SegmentWriter) Fill(to pg.LSN) {
	for {
		left := int(to.Sub(w.Pos()))
		if left < 64 {
			return
		}
		// Header and the main-data header take 29 bytes; page headers
		// on the way make the record end later than to by a little.
		w.Record(pg.RMXLOG, pg.XLOGNoop, make([]byte, min(left-32, 4000)))
	}
}

// Timeline sets the timeline of the pages written from here on.
func (w *SegmentWriter) Timeline(tli pg.TimelineID) { w.tli = tli }

// AbortRecord writes the first n bytes of a record of total bytes and then
// continues on the next page marked XLP_FIRST_IS_OVERWRITE_CONTRECORD, as
// PostgreSQL does after a crash in the middle of writing a record.
func (w *SegmentWriter) AbortRecord(total, n int) pg.LSN {
	w.align()
	at := w.Pos()
	rec := make([]byte, total)
	binary.LittleEndian.PutUint32(rec, uint32(total))
	w.put(rec[:n], total)
	w.pos = (w.pos + WALPageSize - 1) / WALPageSize * WALPageSize
	w.grow()
	w.overwrite = true
	return at
}

func (w *SegmentWriter) grow() {
	for w.pos+WALPageSize > len(w.buf) {
		w.buf = append(w.buf, make([]byte, w.segSize)...)
	}
}

func (w *SegmentWriter) pageHeader(remLen int) {
	w.grow()
	magic, _ := pg.WALMagic(w.major)
	h := w.buf[w.pos:]
	binary.LittleEndian.PutUint16(h[0:], magic)
	info := uint16(0)
	if remLen > 0 {
		info |= pg.XLPFirstIsContRecord
	}
	if w.overwrite {
		info |= pg.XLPFirstIsOverwriteContRecord
		w.overwrite = false
	}
	long := w.pos%int(w.segSize) == 0
	if long {
		info |= pg.XLPLongHeader
	}
	binary.LittleEndian.PutUint16(h[2:], info)
	binary.LittleEndian.PutUint32(h[4:], uint32(w.tli))
	binary.LittleEndian.PutUint64(h[8:], uint64(w.base)+uint64(w.pos))
	binary.LittleEndian.PutUint32(h[16:], uint32(remLen))
	if long {
		binary.LittleEndian.PutUint64(h[24:], w.sysid)
		binary.LittleEndian.PutUint32(h[32:], w.segSize)
		binary.LittleEndian.PutUint32(h[36:], WALPageSize)
		w.pos += pg.WALLongPageHeaderSize
	} else {
		w.pos += pg.WALShortPageHeaderSize
	}
}

// Commit appends a commit record at time c.
func (w *SegmentWriter) Commit(c time.Time) pg.LSN {
	var main [8]byte
	binary.LittleEndian.PutUint64(main[:], uint64(pg.ToTimestampTz(c)))
	return w.Record(pg.RMXact, pg.XactCommit, main[:])
}

// Record appends a record of resource manager rmid with info bits info
// and main data main (no block references) and returns its LSN.
func (w *SegmentWriter) Record(rmid, info uint8, main []byte) pg.LSN {
	return w.BlockRecord(rmid, info, nil, main)
}

// Block is a block reference for BlockRecord.
type Block struct {
	Rel   pg.RelFileLocator
	Fork  pg.Fork
	Block uint32
	// Image adds a full-page image of that many bytes (compressed when
	// shorter than a page, as wal_compression leaves it); Data that much
	// block data.
	Image int
	Data  int
}

// BlockRecord appends a record with block references (IDs 0, 1, ...) and
// main data, laid out as XLogRecordAssemble does, and returns its LSN.
func (w *SegmentWriter) BlockRecord(rmid, info uint8, blocks []Block, main []byte) pg.LSN {
	var hdr, data []byte
	le := binary.LittleEndian
	var last *pg.RelFileLocator
	apply, compressed := uint8(0x02), uint8(0x04)
	if w.major < 15 {
		apply, compressed = 0x04, 0x02
	}
	for i, b := range blocks {
		flags := uint8(b.Fork)
		if b.Image > 0 {
			flags |= pg.BkpBlockHasImage
		}
		if b.Data > 0 {
			flags |= pg.BkpBlockHasData
		}
		same := last != nil && *last == b.Rel
		if same {
			flags |= pg.BkpBlockSameRel
		}
		hdr = append(hdr, byte(i), flags)
		hdr = le.AppendUint16(hdr, uint16(b.Data))
		if b.Image > 0 {
			hdr = le.AppendUint16(hdr, uint16(b.Image))
			hdr = le.AppendUint16(hdr, 0) // hole offset
			bimg := apply
			if b.Image < 8192 {
				bimg |= compressed
			}
			hdr = append(hdr, bimg)
			data = append(data, bytes.Repeat([]byte{byte(b.Block)}, b.Image)...)
		}
		if !same {
			hdr = le.AppendUint32(hdr, b.Rel.Spc)
			hdr = le.AppendUint32(hdr, b.Rel.DB)
			hdr = le.AppendUint32(hdr, b.Rel.Rel)
			r := b.Rel
			last = &r
		}
		hdr = le.AppendUint32(hdr, b.Block)
		data = append(data, bytes.Repeat([]byte{0xB1}, b.Data)...)
	}
	if len(main) > 0 {
		if len(main) < 256 {
			hdr = append(hdr, pg.BlockIDDataShort, byte(len(main)))
		} else {
			hdr = append(hdr, pg.BlockIDDataLong)
			hdr = le.AppendUint32(hdr, uint32(len(main)))
		}
	}
	body := append(append(hdr, data...), main...)
	return w.RawRecord(rmid, info, body)
}

// RawRecord appends a record whose headers after XLogRecord (block
// headers, main-data header) and data are body, as given, and returns its
// LSN.
func (w *SegmentWriter) RawRecord(rmid, info uint8, body []byte) pg.LSN {
	rec := make([]byte, pg.WALRecordHeaderSize, pg.WALRecordHeaderSize+len(body))
	rec = append(rec, body...)
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)))
	binary.LittleEndian.PutUint64(rec[8:], uint64(w.prev))
	rec[16], rec[17] = info, rmid
	crc := crc32.Update(0, castagnoli, rec[pg.WALRecordHeaderSize:])
	crc = crc32.Update(crc, castagnoli, rec[:20])
	binary.LittleEndian.PutUint32(rec[20:], crc)
	w.align()
	at := w.Pos()
	w.put(rec, len(rec))
	w.prev = at
	if rmid == pg.RMXLOG && info&0xF0 == pg.XLOGSwitch {
		// The rest of the segment is unused.
		seg := int(w.segSize)
		w.pos = (w.pos + seg - 1) / seg * seg
		w.grow()
	}
	return at
}

// align moves to the next 8-byte boundary and past a page header.
func (w *SegmentWriter) align() {
	w.pos = (w.pos + 7) &^ 7
	if w.pos%WALPageSize == 0 {
		w.pageHeader(0)
	}
}

// put lays out rec (the first bytes of a record of total bytes) from pos.
func (w *SegmentWriter) put(rec []byte, total int) {
	left := total
	for len(rec) > 0 {
		if w.pos%WALPageSize == 0 {
			w.pageHeader(left)
		}
		n := copy(w.buf[w.pos:w.pos+WALPageSize-w.pos%WALPageSize], rec)
		rec = rec[n:]
		left -= n
		w.pos += n
	}
}
