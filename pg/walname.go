package pg

import (
	"errors"
	"fmt"
	"strconv"
)

// TimelineID identifies a timeline: the history that began when a cluster
// was initialised (timeline 1) or promoted at the end of an archive recovery
// (each promotion starts a new, higher one).
type TimelineID uint32

// WAL segment sizes PostgreSQL accepts (initdb --wal-segsize): a power of two
// from 1 MiB to 1 GiB.
const (
	MinWALSegSize     = 1 << 20
	MaxWALSegSize     = 1 << 30
	DefaultWALSegSize = 16 << 20
)

// ErrInvalidWALSegSize is returned (wrapped) for a WAL segment size
// PostgreSQL would not accept.
var ErrInvalidWALSegSize = errors.New("invalid WAL segment size")

// ValidateWALSegSize checks that size is a WAL segment size PostgreSQL
// accepts (IsValidWalSegSize). All segment arithmetic here assumes it.
func ValidateWALSegSize(size uint64) error {
	if size < MinWALSegSize || size > MaxWALSegSize || size&(size-1) != 0 {
		return fmt.Errorf("%w %d: must be a power of two from 1 MiB to 1 GiB", ErrInvalidWALSegSize, size)
	}
	return nil
}

// SegmentsPerXLogID returns how many segments share one value of the middle
// eight digits of a segment name (XLogSegmentsPerXLogId): 256 for 16 MiB.
func SegmentsPerXLogID(segSize uint32) uint64 { return 0x100000000 / uint64(segSize) }

// SegmentName returns the file name of segment seg on timeline tli
// (XLogFileName), e.g. "000000010000000A000000FF".
func SegmentName(tli TimelineID, seg SegNo, segSize uint32) string {
	per := SegmentsPerXLogID(segSize)
	return hex8(uint32(tli)) + hex8(uint32(uint64(seg)/per)) + hex8(uint32(uint64(seg)%per))
}

// HistoryFileName returns the name of timeline tli's history file
// (TLHistoryFileName), e.g. "00000002.history".
func HistoryFileName(tli TimelineID) string { return hex8(uint32(tli)) + ".history" }

// BackupHistoryFileName returns the name of the backup history file that
// pg_backup_stop writes for a backup that started at start on tli
// (BackupHistoryFileName), e.g. "000000010000000000000002.00000028.backup".
func BackupHistoryFileName(tli TimelineID, start LSN, segSize uint32) string {
	return SegmentName(tli, start.Segment(segSize), segSize) + "." + hex8(start.SegmentOffset(segSize)) + ".backup"
}

func hex8(v uint32) string {
	const digits = "0123456789ABCDEF"
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xF]
		v >>= 4
	}
	return string(b[:])
}

// WALFileKind says what a file in pg_wal or in the WAL archive is.
type WALFileKind int

// The kinds of WAL archive files. Their numbering is not stored anywhere.
const (
	// WALSegment is a complete segment, TTTTTTTTXXXXXXXXYYYYYYYY.
	WALSegment WALFileKind = iota + 1
	// WALPartialSegment is a segment that was incomplete when its timeline
	// ended (or when pg_receivewal stopped): segment name + ".partial".
	// Recovery never asks for one by that name.
	WALPartialSegment
	// WALBackupHistory is a backup history file, segment name + "." + eight
	// hex digits of the start offset + ".backup".
	WALBackupHistory
	// WALTimelineHistory is a timeline history file, TTTTTTTT.history.
	WALTimelineHistory
)

func (k WALFileKind) String() string {
	switch k {
	case WALSegment:
		return "segment"
	case WALPartialSegment:
		return "partial segment"
	case WALBackupHistory:
		return "backup history file"
	case WALTimelineHistory:
		return "timeline history file"
	}
	return "WALFileKind(" + strconv.Itoa(int(k)) + ")"
}

// WALFile is a parsed WAL archive file name.
type WALFile struct {
	Kind     WALFileKind
	Timeline TimelineID
	// Log and Seg are the middle and last eight hex digits of a segment
	// name, as written. Turning them into a SegNo needs the segment size:
	// see SegNo. Zero for a timeline history file.
	Log, Seg uint32
	// Offset is the backup's start offset within its segment (the eight
	// digits before ".backup"); zero for other kinds.
	Offset uint32
}

// ErrNotWALFile is returned (wrapped) by ParseWALFileName for a name that is
// none of the WAL file kinds.
var ErrNotWALFile = errors.New("not a WAL file name")

// ParseWALFileName classifies a file name from pg_wal or the archive. Like
// PostgreSQL it accepts only upper-case hexadecimal, so that a name has one
// spelling and archive keys cannot alias.
func ParseWALFileName(name string) (WALFile, error) {
	bad := func(why string) (WALFile, error) {
		return WALFile{}, fmt.Errorf("%w: %q %s", ErrNotWALFile, name, why)
	}
	switch {
	case len(name) == 8+len(".history") && name[8:] == ".history":
		tli, ok := parseHex8(name[:8])
		if !ok {
			return bad("has a timeline that is not 8 upper-case hex digits")
		}
		if tli == 0 {
			return bad("names timeline 0")
		}
		return WALFile{Kind: WALTimelineHistory, Timeline: TimelineID(tli)}, nil
	case len(name) < 24:
		return bad("is too short for a WAL file name")
	}
	tli, ok1 := parseHex8(name[0:8])
	log, ok2 := parseHex8(name[8:16])
	seg, ok3 := parseHex8(name[16:24])
	if !ok1 || !ok2 || !ok3 {
		return bad("does not start with 24 upper-case hex digits")
	}
	if tli == 0 {
		return bad("names timeline 0")
	}
	f := WALFile{Timeline: TimelineID(tli), Log: log, Seg: seg}
	switch rest := name[24:]; {
	case rest == "":
		f.Kind = WALSegment
	case rest == ".partial":
		f.Kind = WALPartialSegment
	case len(rest) == 1+8+len(".backup") && rest[0] == '.' && rest[9:] == ".backup":
		off, ok := parseHex8(rest[1:9])
		if !ok {
			return bad("has a backup offset that is not 8 upper-case hex digits")
		}
		f.Kind, f.Offset = WALBackupHistory, off
	default:
		return bad("has an unknown suffix")
	}
	return f, nil
}

func parseHex8(s string) (uint32, bool) {
	if len(s) != 8 {
		return 0, false
	}
	var v uint32
	for i := 0; i < 8; i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint32(c-'0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | uint32(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// SegNo returns the segment number the name denotes for a cluster with the
// given segment size. It fails for a timeline history file and for a name
// whose last eight digits are out of range for that size (with 16 MiB
// segments they run only to 000000FF): such a name cannot come from that
// cluster.
func (f WALFile) SegNo(segSize uint32) (SegNo, error) {
	if f.Kind == WALTimelineHistory {
		return 0, fmt.Errorf("%s has no segment number", f.Name())
	}
	per := SegmentsPerXLogID(segSize)
	if uint64(f.Seg) >= per {
		return 0, fmt.Errorf("%w: %s is not a segment of a cluster with %d-byte WAL segments", ErrNotWALFile, f.Name(), segSize)
	}
	return SegNo(uint64(f.Log)*per + uint64(f.Seg)), nil
}

// SegmentName returns the 24-character segment name a segment, partial
// segment or backup history file belongs to ("" for a timeline history
// file).
func (f WALFile) SegmentName() string {
	if f.Kind == WALTimelineHistory {
		return ""
	}
	return hex8(uint32(f.Timeline)) + hex8(f.Log) + hex8(f.Seg)
}

// LogDir returns the first 16 characters of the segment name, timeline and
// "log" number (TTTTTTTTXXXXXXXX), which the archive uses as a directory so
// that no listing holds more than one 4 GiB stretch of one timeline. A
// timeline history file has no log: "".
func (f WALFile) LogDir() string {
	if f.Kind == WALTimelineHistory {
		return ""
	}
	return hex8(uint32(f.Timeline)) + hex8(f.Log)
}

// Name returns the file name again.
func (f WALFile) Name() string {
	switch f.Kind {
	case WALTimelineHistory:
		return HistoryFileName(f.Timeline)
	case WALPartialSegment:
		return f.SegmentName() + ".partial"
	case WALBackupHistory:
		return f.SegmentName() + "." + hex8(f.Offset) + ".backup"
	}
	return f.SegmentName()
}

// StartLSN returns, for a backup history file, the LSN at which the backup
// started.
func (f WALFile) StartLSN(segSize uint32) (LSN, error) {
	if f.Kind != WALBackupHistory {
		return 0, fmt.Errorf("%s is not a backup history file", f.Name())
	}
	seg, err := f.SegNo(segSize)
	if err != nil {
		return 0, err
	}
	if f.Offset >= segSize {
		return 0, fmt.Errorf("%w: %s has an offset beyond the %d-byte segment", ErrNotWALFile, f.Name(), segSize)
	}
	return seg.Start(segSize) + LSN(f.Offset), nil
}
