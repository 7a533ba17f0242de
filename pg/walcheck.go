package pg

import (
	"fmt"
)

// WALSegmentCheck checks every page header of one WAL segment as its bytes
// are written to it, holding at most one page header: what verify --read-data
// proves of an archived segment beyond its MAC, that the bytes are the
// segment its name says, of the cluster it is filed under. It does not
// decode records.
//
// The rules are those of PostgreSQL's page header validation
// (XLogReaderValidatePageHeader) for a segment read from its first byte:
//
//   - the first page has the long header, a known magic, the cluster's
//     system identifier, segment size and WAL page size, the address of the
//     segment the name denotes and a timeline no newer than the name's;
//   - every other page has a short header with the same magic, the address
//     of that page, and a timeline no older than the page before it and no
//     newer than the name's (the first segment of a timeline starts with its
//     parent's WAL);
//   - or the page is all zeros, and then so is every page after it: since
//     PostgreSQL 11 the rest of a segment after XLOG_SWITCH is zero pages,
//     headers included.
//
// A complete segment must have exactly the segment size. A .partial
// segment is the WAL up to a promotion, followed by whatever the file held
// before (zeros, or a recycled segment's old pages): its first page is
// checked, the pages after it are read until the first one that does not
// continue the WAL and no further, and it may be shorter than a segment.
type WALSegmentCheck struct {
	name     string
	partial  bool
	tli      TimelineID // of the file name
	start    LSN
	sysid    uint64
	segSize  uint32
	pageSize uint32

	n       int64 // bytes seen
	hdr     [WALLongPageHeaderSize]byte
	hdrLen  int    // bytes of the current page's header collected
	zero    bool   // the current page is all zeros so far
	padding bool   // an all-zero page was seen: every later page must be one too
	ended   bool   // a .partial's WAL ended
	magic   uint16 // of the first page
	lastTLI TimelineID
	err     error
}

// NewWALSegmentCheck starts checking the segment or .partial segment called
// name of the cluster with system identifier sysid, segments of segSize
// bytes and WAL pages of pageSize bytes.
func NewWALSegmentCheck(name string, sysid uint64, segSize, pageSize uint32) (*WALSegmentCheck, error) {
	f, err := ParseWALFileName(name)
	if err != nil {
		return nil, err
	}
	if f.Kind != WALSegment && f.Kind != WALPartialSegment {
		return nil, fmt.Errorf("%s is a %s, not a segment", name, f.Kind)
	}
	if err := ValidateWALSegSize(uint64(segSize)); err != nil {
		return nil, err
	}
	if !isPow2In(uint64(pageSize), 1024, 65536) || segSize%pageSize != 0 {
		return nil, fmt.Errorf("WAL page size %d with segment size %d", pageSize, segSize)
	}
	seg, err := f.SegNo(segSize)
	if err != nil {
		return nil, err
	}
	return &WALSegmentCheck{name: name, partial: f.Kind == WALPartialSegment, tli: f.Timeline,
		start: seg.Start(segSize), sysid: sysid, segSize: segSize, pageSize: pageSize, zero: true}, nil
}

// Write takes the segment's next bytes. It never fails: the first problem
// is kept for Close, so that a caller that authenticates the same bytes
// reads them all and can report a failed authentication first.
func (c *WALSegmentCheck) Write(p []byte) (int, error) {
	n := len(p)
	ps := int64(c.pageSize)
	for len(p) > 0 {
		if c.err != nil || c.ended {
			c.n += int64(len(p))
			break
		}
		if c.n >= int64(c.segSize) {
			c.fail("more than the segment size of %d bytes", c.segSize)
			continue
		}
		off := c.n % ps
		// Bytes of this page up to the end of its header, then the rest.
		hsize := int64(WALShortPageHeaderSize)
		if c.n < ps {
			hsize = WALLongPageHeaderSize
		}
		var take int64
		if off < hsize {
			take = min(int64(len(p)), hsize-off)
			copy(c.hdr[off:], p[:take])
			c.hdrLen = int(off + take)
		} else {
			take = min(int64(len(p)), ps-off)
		}
		if c.zero {
			for _, b := range p[:take] {
				if b != 0 {
					c.zero = false
					break
				}
			}
		}
		c.n += take
		p = p[take:]
		// A page is judged once all of it is here: only then is it known
		// to be all zeros.
		if c.n%ps == 0 {
			c.page(c.n/ps - 1)
		}
	}
	return n, nil
}

func (c *WALSegmentCheck) fail(format string, args ...any) {
	if c.err == nil {
		c.err = walHeaderErr("%s: %s", c.name, fmt.Sprintf(format, args...))
	}
}

// page judges page i, whose header is in c.hdr and which was all zeros if
// c.zero.
func (c *WALSegmentCheck) page(i int64) {
	zero := c.zero
	c.zero, c.hdrLen = true, 0
	addr := c.start.Add(uint64(i) * uint64(c.pageSize))
	if i == 0 {
		h, err := ParseSegmentHeader(c.hdr[:])
		switch {
		case err != nil:
			c.fail("first page: %v", err)
		case h.SysID != c.sysid:
			c.fail("first page: segment of system %d, not %d", h.SysID, c.sysid)
		case h.SegSize != c.segSize || h.BlockSize != c.pageSize:
			c.fail("first page: %d-byte segments of %d-byte pages, the cluster has %d and %d", h.SegSize, h.BlockSize, c.segSize, c.pageSize)
		default:
			if err := h.CheckName(c.name); err != nil {
				c.err = err
				return
			}
			c.magic, c.lastTLI = h.Magic, h.Timeline
		}
		return
	}
	if zero {
		if c.partial {
			c.ended = true
		}
		c.padding = true
		return
	}
	bad := func(format string, args ...any) {
		if c.partial {
			c.ended = true // the WAL up to the promotion ended here
			return
		}
		c.fail("page %d (%s): %s", i, addr, fmt.Sprintf(format, args...))
	}
	if c.padding {
		bad("not zero after an all-zero page (the rest of a segment after a WAL switch is zeros)")
		return
	}
	// Only the short header's bytes were collected; the rest of c.hdr is
	// left over from the first page and parsed only if the flags say long.
	h, err := ParseWALPageHeader(c.hdr[:])
	switch {
	case err != nil:
		bad("%v", err)
	case h.IsLong():
		bad("a long header in the middle of a segment")
	case h.Magic != c.magic:
		bad("magic %#04x, the first page has %#04x", h.Magic, c.magic)
	case h.PageAddr != addr:
		bad("the header says it is at %s", h.PageAddr)
	case h.Timeline < c.lastTLI:
		bad("timeline %d after timeline %d", h.Timeline, c.lastTLI)
	case h.Timeline > c.tli:
		bad("timeline %d in a file of timeline %d", h.Timeline, c.tli)
	default:
		c.lastTLI = h.Timeline
	}
}

// Close returns the first problem found, or a size that is not the
// segment's.
func (c *WALSegmentCheck) Close() error {
	if c.err != nil {
		return c.err
	}
	switch {
	case c.n == 0:
		return walHeaderErr("%s: empty", c.name)
	case !c.partial && c.n != int64(c.segSize):
		return walHeaderErr("%s: %d bytes, a segment has %d", c.name, c.n, c.segSize)
	case c.n < int64(c.pageSize):
		// A .partial shorter than a page: its first page is all there is
		// to judge.
		c.page(0)
		return c.err
	}
	// The last page of a .partial may be incomplete; it is not judged.
	return nil
}

// Pages returns the number of whole pages checked.
func (c *WALSegmentCheck) Pages() int64 { return c.n / int64(c.pageSize) }
