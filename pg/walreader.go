package pg

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// DefaultWALRecordKeep is how many bytes of a record a WALReader keeps
// unless told otherwise: every record's headers, and the main data of all
// but huge ones (full-page images of CREATE INDEX come 32 to a record, 256
// KiB).
const DefaultWALRecordKeep = 1 << 20

// WALReader decodes the records of consecutive WAL bytes, fed to it with
// Write in any pieces, from a segment's first byte on and across page and
// segment boundaries, as PostgreSQL's xlogreader reads them: page headers
// are checked (magic, address, timeline, continuation flags), records are
// reassembled across pages, CRC-checked and decoded (DecodeWALRecord), and
// the rest of a segment after XLOG_SWITCH is skipped. The first invalid
// page or record ends the valid WAL (Ended); a record overwritten by
// XLOG_OVERWRITE_CONTRECORD is dropped as recovery drops it.
//
// A record is handed to OnRecord once complete; its memory is reused after
// the call returns. Only the first Keep bytes of a record are held (its CRC
// covers all of it), so a reader's memory is bounded whatever the WAL holds.
type WALReader struct {
	// OnRecord is called for each complete, valid record, in order. An
	// error stops the reader and is returned by Write.
	OnRecord func(*WALRecord) error
	// OnContinuation is called with the bytes, on each page, of a record
	// that began before the reader's start (its first page's
	// XLP_FIRST_IS_CONTRECORD): total is the xlp_rem_len of the first such
	// page, off the offset of data within those total bytes.
	OnContinuation func(data []byte, off, total uint32)
	// Keep bounds the bytes of one record held in memory
	// (DefaultWALRecordKeep when 0; at least the header).
	Keep int

	segSize, pageSize uint32
	major             int
	magic             uint16
	tli               TimelineID
	pos               LSN // LSN of the next byte Write takes
	page              []byte
	staged            int

	// The record being reassembled across pages, if asmTotal > 0.
	asm      []byte
	asmLSN   LSN
	asmTotal uint32
	asmGot   uint32
	asmCRC   uint32 // CRC of the bytes past asm's end (kept bytes are summed at the end)
	asmCut   bool

	started     bool   // a page was read
	contLeft    uint32 // bytes of a record begun before the start still to skip
	contDropped bool   // that record was overwritten (XLP_FIRST_IS_OVERWRITE_CONTRECORD)
	contOff     uint32
	contTot     uint32
	prev        LSN // the last record's LSN, for xl_prev
	skipTo      LSN // after XLOG_SWITCH: nothing to read before this
	rec         WALRecord

	ended     bool
	endLSN    LSN
	endReason string
	err       error
}

// NewWALReader returns a reader for the WAL starting at start, the first
// byte of a segment, in segments of segSize bytes made of pages of pageSize
// bytes (the segment's long page header says both).
func NewWALReader(start LSN, segSize, pageSize uint32) (*WALReader, error) {
	if err := ValidateWALSegSize(uint64(segSize)); err != nil {
		return nil, err
	}
	if !isPow2In(uint64(pageSize), 1024, 65536) || segSize%pageSize != 0 {
		return nil, fmt.Errorf("WAL page size %d with segment size %d", pageSize, segSize)
	}
	if start.SegmentOffset(segSize) != 0 {
		return nil, fmt.Errorf("WAL reader must start at a segment boundary, not %s", start)
	}
	return &WALReader{segSize: segSize, pageSize: pageSize, pos: start, page: make([]byte, pageSize)}, nil
}

// Pos returns the LSN of the next byte Write expects.
func (r *WALReader) Pos() LSN { return r.pos }

// Major returns the PostgreSQL major version the WAL's magic names (0
// before the first page).
func (r *WALReader) Major() int { return r.major }

// Ended reports whether the valid WAL ended, where, and why. Bytes written
// after that are ignored.
func (r *WALReader) Ended() (bool, LSN, string) { return r.ended, r.endLSN, r.endReason }

// Pending returns the record being reassembled when the bytes written so
// far end inside it: its LSN, its total length, how many of its bytes were
// read and the first of them (at most Keep). ok is false when the bytes
// written end between records.
func (r *WALReader) Pending() (lsn LSN, total, got uint32, head []byte, ok bool) {
	if r.asmTotal == 0 || r.ended {
		return 0, 0, 0, nil, false
	}
	return r.asmLSN, r.asmTotal, r.asmGot, r.asm, true
}

// PageSize returns the WAL page size the reader was made for.
func (r *WALReader) PageSize() uint32 { return r.pageSize }

// ContinuationLeft returns how many bytes of a record begun before the
// reader's start are still to come (0 once it was skipped).
func (r *WALReader) ContinuationLeft() uint32 { return r.contLeft }

// ContinuationDropped reports whether the record begun before the reader's
// start was cut short by XLP_FIRST_IS_OVERWRITE_CONTRECORD: it was never
// completed, and recovery skips it.
func (r *WALReader) ContinuationDropped() bool { return r.contDropped }

func (r *WALReader) keep() int {
	if r.Keep <= 0 {
		return DefaultWALRecordKeep
	}
	return max(r.Keep, WALRecordHeaderSize)
}

// end stops the reader: the valid WAL ends at lsn, or where the record
// being reassembled began.
func (r *WALReader) end(lsn LSN, format string, args ...any) {
	if r.ended {
		return
	}
	if r.asmTotal > 0 {
		lsn = r.asmLSN
	}
	r.ended, r.endLSN, r.endReason = true, lsn, fmt.Sprintf(format, args...)
	r.asm, r.asmTotal = nil, 0
}

// Write feeds the next bytes of WAL. It returns an error only when
// OnRecord returned one; invalid WAL ends the reader instead (Ended).
func (r *WALReader) Write(p []byte) (int, error) {
	n := len(p)
	ps := int(r.pageSize)
	for len(p) > 0 && r.err == nil {
		if r.staged == 0 && len(p) >= ps {
			r.readPage(p[:ps])
			p = p[ps:]
			continue
		}
		k := copy(r.page[r.staged:], p)
		r.staged += k
		p = p[k:]
		if r.staged == ps {
			r.staged = 0
			r.readPage(r.page)
		}
	}
	return n, r.err
}

// readPage reads the page at r.pos.
func (r *WALReader) readPage(pg []byte) {
	lsn := r.pos
	r.pos = lsn.Add(uint64(r.pageSize))
	if r.ended || r.err != nil || lsn < r.skipTo {
		return
	}
	long := lsn.SegmentOffset(r.segSize) == 0
	h, err := ParseWALPageHeader(pg)
	switch {
	case err != nil:
		r.end(lsn, "invalid page header at %s: %v", lsn, err)
		return
	case h.IsLong() != long:
		r.end(lsn, "page at %s has the wrong header form (xlp_info %#04x)", lsn, h.Info)
		return
	case h.PageAddr != lsn:
		r.end(lsn, "page at %s says it is at %s (a recycled segment's old page)", lsn, h.PageAddr)
		return
	}
	if r.magic == 0 {
		major, ok := WALMagicMajor(h.Magic)
		if !ok {
			r.end(lsn, "page at %s has magic %#04x, not that of PostgreSQL 13 to 18", lsn, h.Magic)
			return
		}
		r.magic, r.major = h.Magic, major
	} else if h.Magic != r.magic {
		r.end(lsn, "page at %s has magic %#04x, earlier pages %#04x", lsn, h.Magic, r.magic)
		return
	}
	if long && (h.SegSize != r.segSize || h.BlockSize != r.pageSize) {
		r.end(lsn, "segment at %s has %d-byte segments of %d-byte pages, not %d and %d", lsn, h.SegSize, h.BlockSize, r.segSize, r.pageSize)
		return
	}
	if h.Timeline < r.tli {
		r.end(lsn, "page at %s is of timeline %d after timeline %d", lsn, h.Timeline, r.tli)
		return
	}
	r.tli = h.Timeline
	off := uint32(WALShortPageHeaderSize)
	if long {
		off = WALLongPageHeaderSize
	}
	cont := h.Info&XLPFirstIsContRecord != 0
	first := !r.started
	r.started = true
	switch {
	case r.asmTotal > 0:
		if !cont {
			if h.Info&XLPFirstIsOverwriteContRecord == 0 {
				r.end(r.asmLSN, "page at %s lacks the continuation of the record at %s", lsn, r.asmLSN)
				return
			}
			// The record was never completed (a crash while it was
			// written): recovery skips it, so do we.
			r.asm, r.asmTotal = r.asm[:0], 0
			break
		}
		if h.RemLen != r.asmTotal-r.asmGot {
			r.end(r.asmLSN, "page at %s continues the record at %s with %d bytes, %d expected", lsn, r.asmLSN, h.RemLen, r.asmTotal-r.asmGot)
			return
		}
		n := min(h.RemLen, r.pageSize-off)
		r.assemble(pg[off : off+n])
		off += n
		if r.asmGot < r.asmTotal {
			return
		}
		if !r.finishAssembled(lsn.Add(uint64(off))) {
			return
		}
		off = align8u32(off)
	case r.contLeft > 0 && !cont && h.Info&XLPFirstIsOverwriteContRecord != 0:
		// The record begun before the start was never completed.
		r.contLeft, r.contDropped = 0, true
	case first && cont, r.contLeft > 0:
		if !cont || (!first && h.RemLen != r.contLeft) {
			r.end(lsn, "page at %s does not continue the record begun before the start", lsn)
			return
		}
		if first {
			r.contTot, r.contOff = h.RemLen, 0
		}
		n := min(h.RemLen, r.pageSize-off)
		if r.OnContinuation != nil {
			r.OnContinuation(pg[off:off+n], r.contOff, r.contTot)
		}
		r.contOff += n
		r.contLeft = h.RemLen - n
		off += n
		if r.contLeft > 0 {
			return
		}
		off = align8u32(off)
	case cont:
		r.end(lsn, "page at %s continues a record where a new one should start", lsn)
		return
	}
	r.records(pg, lsn, off)
}

// records reads the records that start on the page at lsn from offset off.
func (r *WALReader) records(pg []byte, lsn LSN, off uint32) {
	for off+4 <= r.pageSize && !r.ended && r.err == nil && lsn >= r.skipTo {
		at := lsn.Add(uint64(off))
		total := binary.LittleEndian.Uint32(pg[off:])
		switch {
		case total == 0:
			r.end(at, "end of WAL at %s (zero record length)", at)
			return
		case total < WALRecordHeaderSize || total > MaxWALRecordSize:
			r.end(at, "invalid record length %d at %s", total, at)
			return
		}
		if off+total <= r.pageSize {
			end := at.Add(uint64(total))
			raw := pg[off : off+total]
			crc := crc32.Update(0, castagnoli, raw[WALRecordHeaderSize:])
			if !r.finish(raw, at, end, total, crc, false) {
				return
			}
			off = align8u32(off + total)
			continue
		}
		r.asm = r.asm[:0]
		r.asmLSN, r.asmTotal, r.asmGot, r.asmCRC, r.asmCut = at, total, 0, 0, false
		r.assemble(pg[off:])
		return
	}
}

// assemble appends the next piece of the record being reassembled.
func (r *WALReader) assemble(b []byte) {
	r.asmGot += uint32(len(b))
	if room := r.keep() - len(r.asm); room > 0 {
		k := min(room, len(b))
		r.asm = append(r.asm, b[:k]...)
		b = b[k:]
	}
	if len(b) == 0 {
		return
	}
	if !r.asmCut {
		// From here on bytes are summed as they pass: the kept ones
		// first, in order.
		r.asmCut = true
		r.asmCRC = crc32.Update(0, castagnoli, r.asm[WALRecordHeaderSize:])
	}
	r.asmCRC = crc32.Update(r.asmCRC, castagnoli, b)
}

// finishAssembled completes the reassembled record, which ends at end.
func (r *WALReader) finishAssembled(end LSN) bool {
	crc := r.asmCRC
	if !r.asmCut {
		crc = crc32.Update(0, castagnoli, r.asm[WALRecordHeaderSize:])
	}
	total := r.asmTotal
	r.asmTotal = 0
	return r.finish(r.asm, r.asmLSN, end, total, crc, r.asmCut)
}

// finish checks and hands over one record: raw are its kept bytes, body
// the CRC of everything after its header. It returns false when the
// reader stopped.
func (r *WALReader) finish(raw []byte, lsn, end LSN, total uint32, body uint32, cut bool) bool {
	if walRecordCRC(body, raw) != binary.LittleEndian.Uint32(raw[20:]) {
		r.end(lsn, "record at %s fails its CRC", lsn)
		return false
	}
	if prev := LSN(binary.LittleEndian.Uint64(raw[8:])); r.prev != 0 && prev != r.prev {
		r.end(lsn, "record at %s points back to %s, not %s", lsn, prev, r.prev)
		return false
	}
	r.rec.LSN, r.rec.EndLSN = lsn, end
	if err := DecodeWALRecord(raw, r.major, &r.rec); err != nil {
		r.end(lsn, "record at %s: %v", lsn, err)
		return false
	}
	if r.rec.Len != total || r.rec.Cut != cut {
		r.end(lsn, "record at %s: %d bytes read of %d", lsn, len(raw), total)
		return false
	}
	r.prev = lsn
	if r.OnRecord != nil {
		if err := r.OnRecord(&r.rec); err != nil {
			r.err = err
			return false
		}
	}
	if r.rec.RMID == RMXLOG && r.rec.RecordType() == XLOGSwitch {
		// The rest of the segment is padding.
		seg := end.Segment(r.segSize)
		if end.SegmentOffset(r.segSize) != 0 {
			seg++
		}
		r.skipTo = seg.Start(r.segSize)
		return false
	}
	return true
}

func align8u32(n uint32) uint32 { return (n + 7) &^ 7 }
