// Package pgtest builds PostgreSQL's on-disk formats synthetically for unit
// tests of the code that reads them: WAL segments with records that span
// pages. It is test support, not a second writer of those formats: tests
// against real servers (internal/testenv) prove the readers on bytes
// PostgreSQL itself wrote.
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
		var main [8]byte
		binary.LittleEndian.PutUint64(main[:], uint64(pg.ToTimestampTz(c)))
		w.Record(pg.RMXact, pg.XactCommit, main[:])
	}
	return w.Bytes()
}

// SegmentWriter lays WAL records out in one segment, with page headers
// and continuation records as PostgreSQL 15 writes them.
type SegmentWriter struct {
	buf     []byte
	pos     int
	base    pg.LSN
	tli     pg.TimelineID
	sysid   uint64
	segSize uint32
}

// NewSegmentWriter starts an empty segment; the rest of the buffer stays
// zero, which readers take as the end of the valid WAL.
func NewSegmentWriter(tli pg.TimelineID, seg pg.SegNo, segSize uint32, sysid uint64) *SegmentWriter {
	return &SegmentWriter{buf: make([]byte, segSize), base: seg.Start(segSize), tli: tli, sysid: sysid, segSize: segSize}
}

// Bytes returns the segment.
func (w *SegmentWriter) Bytes() []byte { return w.buf }

// Pos returns the LSN the next record would start at (before alignment).
func (w *SegmentWriter) Pos() pg.LSN { return w.base.Add(uint64(w.pos)) }

func (w *SegmentWriter) pageHeader(remLen int) {
	magic, _ := pg.WALMagic(15)
	h := w.buf[w.pos:]
	binary.LittleEndian.PutUint16(h[0:], magic)
	info := uint16(0)
	if remLen > 0 {
		info |= pg.XLPFirstIsContRecord
	}
	if w.pos == 0 {
		info |= pg.XLPLongHeader
	}
	binary.LittleEndian.PutUint16(h[2:], info)
	binary.LittleEndian.PutUint32(h[4:], uint32(w.tli))
	binary.LittleEndian.PutUint64(h[8:], uint64(w.base)+uint64(w.pos))
	binary.LittleEndian.PutUint32(h[16:], uint32(remLen))
	if w.pos == 0 {
		binary.LittleEndian.PutUint64(h[24:], w.sysid)
		binary.LittleEndian.PutUint32(h[32:], w.segSize)
		binary.LittleEndian.PutUint32(h[36:], WALPageSize)
		w.pos += pg.WALLongPageHeaderSize
	} else {
		w.pos += pg.WALShortPageHeaderSize
	}
}

// Record appends a record of resource manager rmid with info bits info
// and main data main (no block references).
func (w *SegmentWriter) Record(rmid, info uint8, main []byte) {
	var body []byte
	if len(main) < 256 {
		body = append(body, pg.BlockIDDataShort, byte(len(main)))
	} else {
		body = append(body, pg.BlockIDDataLong)
		body = binary.LittleEndian.AppendUint32(body, uint32(len(main)))
	}
	body = append(body, main...)
	w.RawRecord(rmid, info, body)
}

// RawRecord appends a record whose headers after XLogRecord (block
// headers, main-data header) and data are body, as given.
func (w *SegmentWriter) RawRecord(rmid, info uint8, body []byte) {
	rec := make([]byte, pg.WALRecordHeaderSize, pg.WALRecordHeaderSize+len(body))
	rec = append(rec, body...)
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)))
	rec[16], rec[17] = info, rmid
	crc := crc32.Update(0, castagnoli, rec[pg.WALRecordHeaderSize:])
	crc = crc32.Update(crc, castagnoli, rec[:20])
	binary.LittleEndian.PutUint32(rec[20:], crc)
	w.pos = (w.pos + 7) &^ 7
	for len(rec) > 0 {
		if w.pos%WALPageSize == 0 {
			w.pageHeader(0)
		}
		n := copy(w.buf[w.pos:w.pos+WALPageSize-w.pos%WALPageSize], rec)
		rec = rec[n:]
		w.pos += n
		if len(rec) > 0 {
			w.pageHeader(len(rec))
		}
	}
}
