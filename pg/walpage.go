package pg

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// WAL page header flag bits (xlp_info).
const (
	XLPFirstIsContRecord          = 0x0001 // the page starts with the rest of a record
	XLPLongHeader                 = 0x0002 // XLogLongPageHeaderData: the first page of a segment
	XLPBkpRemovable               = 0x0004
	XLPFirstIsOverwriteContRecord = 0x0008
	XLPAllFlags                   = 0x000F
)

// Sizes of the WAL page headers (SizeOfXLogShortPHD, SizeOfXLogLongPHD),
// MAXALIGNed.
const (
	WALShortPageHeaderSize = 24
	WALLongPageHeaderSize  = 40
)

// DefaultWALBlockSize is XLOG_BLCKSZ of a default build: the WAL page size.
const DefaultWALBlockSize = 8192

// WALPageHeader is the header of a WAL page (XLogPageHeaderData). The first
// page of each segment has the long form (XLogLongPageHeaderData), which adds
// SysID, SegSize and BlockSize.
type WALPageHeader struct {
	Magic    uint16     // xlp_magic: the WAL format version
	Info     uint16     // xlp_info flag bits
	Timeline TimelineID // xlp_tli: timeline of the first record on the page
	PageAddr LSN        // xlp_pageaddr: the LSN of the page's first byte
	RemLen   uint32     // xlp_rem_len: bytes of a record continued from the previous page

	// Long header only.
	SysID     uint64 // xlp_sysid: the cluster's system identifier
	SegSize   uint32 // xlp_seg_size
	BlockSize uint32 // xlp_xlog_blcksz
}

// IsLong reports whether the header has the long form.
func (h WALPageHeader) IsLong() bool { return h.Info&XLPLongHeader != 0 }

// ErrInvalidWALHeader is matched by every error from ParseWALPageHeader,
// ParseSegmentHeader and SegmentHeader's checks.
var ErrInvalidWALHeader = errors.New("invalid WAL page header")

func walHeaderErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidWALHeader, fmt.Sprintf(format, args...))
}

// ParseWALPageHeader decodes a WAL page header, short or long as xlp_info
// says. It checks only that the bytes are there and that xlp_info has no
// undefined bits; the magic is left to the caller (see WALMagicMajor).
func ParseWALPageHeader(b []byte) (WALPageHeader, error) {
	if len(b) < WALShortPageHeaderSize {
		return WALPageHeader{}, walHeaderErr("%d bytes is shorter than a WAL page header", len(b))
	}
	le := binary.LittleEndian
	h := WALPageHeader{
		Magic:    le.Uint16(b[0:]),
		Info:     le.Uint16(b[2:]),
		Timeline: TimelineID(le.Uint32(b[4:])),
		PageAddr: LSN(le.Uint64(b[8:])),
		RemLen:   le.Uint32(b[16:]),
	}
	if h.Info&^XLPAllFlags != 0 {
		return WALPageHeader{}, walHeaderErr("xlp_info %#04x has undefined bits", h.Info)
	}
	if h.IsLong() {
		if len(b) < WALLongPageHeaderSize {
			return WALPageHeader{}, walHeaderErr("%d bytes is shorter than a long WAL page header", len(b))
		}
		h.SysID = le.Uint64(b[24:])
		h.SegSize = le.Uint32(b[32:])
		h.BlockSize = le.Uint32(b[36:])
	}
	return h, nil
}

// SegmentHeader is the long page header at the start of a WAL segment, with
// the major version its magic identifies.
type SegmentHeader struct {
	WALPageHeader
	Major int
}

// ParseSegmentHeader decodes and checks the first page header of a WAL
// segment (or .partial segment): a known magic, the long-header flag, a
// valid segment and WAL block size, a page address at the start of a
// segment, and a timeline. Checks against what the caller knows (the file
// name, the cluster) are CheckName and CheckSystem.
func ParseSegmentHeader(b []byte) (SegmentHeader, error) {
	h, err := ParseWALPageHeader(b)
	if err != nil {
		return SegmentHeader{}, err
	}
	major, ok := WALMagicMajor(h.Magic)
	if !ok {
		return SegmentHeader{}, walHeaderErr("magic %#04x is not that of PostgreSQL 13 to 18", h.Magic)
	}
	if !h.IsLong() {
		return SegmentHeader{}, walHeaderErr("first page lacks the long header flag (xlp_info %#04x)", h.Info)
	}
	if err := ValidateWALSegSize(uint64(h.SegSize)); err != nil {
		return SegmentHeader{}, walHeaderErr("xlp_seg_size: %v", err)
	}
	if !isPow2In(uint64(h.BlockSize), 1024, 65536) || h.SegSize%h.BlockSize != 0 {
		return SegmentHeader{}, walHeaderErr("xlp_xlog_blcksz %d is not a power of two from 1 kB to 64 kB", h.BlockSize)
	}
	if h.PageAddr.SegmentOffset(h.SegSize) != 0 {
		return SegmentHeader{}, walHeaderErr("xlp_pageaddr %s is not the start of a segment", h.PageAddr)
	}
	if h.Timeline == 0 {
		return SegmentHeader{}, walHeaderErr("xlp_tli is 0")
	}
	return SegmentHeader{WALPageHeader: h, Major: major}, nil
}

// CheckName checks that the header belongs in the file called name (a
// segment or .partial segment name): its page address must be the start of
// that segment, and the timeline of its first record must not be newer than
// the file's. It may be older: the first segment of a new timeline starts
// with a copy of the parent timeline's WAL.
func (h SegmentHeader) CheckName(name string) error {
	f, err := ParseWALFileName(name)
	if err != nil {
		return err
	}
	if f.Kind != WALSegment && f.Kind != WALPartialSegment {
		return walHeaderErr("%s is a %s, not a segment", name, f.Kind)
	}
	seg, err := f.SegNo(h.SegSize)
	if err != nil {
		return walHeaderErr("%v", err)
	}
	if want := seg.Start(h.SegSize); h.PageAddr != want {
		return walHeaderErr("%s starts at %s, but its header says %s", name, want, h.PageAddr)
	}
	if h.Timeline > f.Timeline {
		return walHeaderErr("%s is on timeline %d, but its first page is from timeline %d", name, f.Timeline, h.Timeline)
	}
	return nil
}

// CheckSystem checks that the segment was written by the cluster with system
// identifier sysid, so that WAL from another cluster is never archived or
// replayed under this one's name.
func (h SegmentHeader) CheckSystem(sysid uint64) error {
	if h.SysID != sysid {
		return walHeaderErr("segment belongs to system %d, not %d", h.SysID, sysid)
	}
	return nil
}
