package walarchive

import (
	"encoding/binary"
	"fmt"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/zeebo/blake3"
)

// The plaintext of every WAL archive object (inside one age stream) is:
//
//	zstd skippable frame
//	  u32 LE  frameMagic          0x184D2A5E
//	  u32 LE  frame size          recordFixedSize + name length
//	  record (recordFixedSize bytes, then the name)
//	zstd frame(s)                 the file, compressed
//
// A zstd decoder skips the first frame, so `age -d | zstd -d` by the holder
// of an escrow key yields the original file byte for byte.
//
// record is the fixed part of the record. It serves only as documentation of
// the bytes (all integers little-endian); encodeRecord and decodeRecord are
// the code.
type record struct {
	Magic    [4]byte  // "TMWL"
	Version  uint8    // recordVersion
	Kind     uint8    // Kind
	NameLen  uint16   // bytes of the name after the fixed part, 1..maxNameLen
	SystemID uint64   // the cluster's system identifier
	Size     uint64   // plaintext bytes of the file
	SegSize  uint32   // the cluster's WAL segment size in bytes
	Reserved uint32   // zero
	MAC      [32]byte // keyed BLAKE3 of macContext, bytes 0..31 of the record, the name and the file
}

const (
	// frameMagic is a zstd skippable frame magic (0x184D2A50..5F); E for
	// "envelope".
	frameMagic = 0x184D2A5E
	// frameHeaderSize is the skippable frame's magic and size fields.
	frameHeaderSize = 8
	// recordFixedSize is the size of record in bytes.
	recordFixedSize = 64
	// recordVersion is the record layout this package writes and reads.
	recordVersion = 1
	// maxNameLen bounds the name; the longest WAL file name is 40 bytes.
	maxNameLen = 255
	// macOffset is where the MAC sits in the record.
	macOffset = 32
	// macContext separates the MAC input from anything else keyed with the
	// same key.
	macContext = "tidemark wal object v1\n"
	// MaxFileSize bounds the plaintext of one object: a segment of the
	// largest size PostgreSQL allows. History and backup history files are
	// far smaller.
	MaxFileSize = pg.MaxWALSegSize
)

var recordMagic = [4]byte{'T', 'M', 'W', 'L'}

// Kind is what an archived object holds. The numbers are stored.
type Kind uint8

const (
	KindSegment         Kind = 1 // a complete WAL segment
	KindPartial         Kind = 2 // a .partial segment
	KindBackupHistory   Kind = 3 // a .backup file
	KindTimelineHistory Kind = 4 // a .history file
	KindCluster         Kind = 5 // the cluster marker (JSON), see ClusterInfo
	KindPiece           Kind = 6 // bytes of a segment being written (Piece), streamed by wal-receive
	KindSummary         Kind = 7 // a segment's block summary (summary.go)
)

func (k Kind) String() string {
	switch k {
	case KindSegment:
		return "segment"
	case KindPartial:
		return "partial segment"
	case KindBackupHistory:
		return "backup history file"
	case KindTimelineHistory:
		return "timeline history file"
	case KindCluster:
		return "cluster marker"
	case KindPiece:
		return "segment piece"
	case KindSummary:
		return "block summary"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// kindOf maps a WAL file name kind to the object kind.
func kindOf(k pg.WALFileKind) Kind {
	switch k {
	case pg.WALSegment:
		return KindSegment
	case pg.WALPartialSegment:
		return KindPartial
	case pg.WALBackupHistory:
		return KindBackupHistory
	case pg.WALTimelineHistory:
		return KindTimelineHistory
	}
	return 0
}

// Meta is what an object's record says about the file it holds.
type Meta struct {
	Name     string
	Kind     Kind
	SystemID uint64
	SegSize  uint32
	Size     int64
	MAC      [32]byte
}

// MACKey is the key of the objects' MAC (repo.Repo.WALMACKey).
type MACKey = [32]byte

// macState starts the MAC of a file with the record's fixed fields and name;
// the file's bytes are written to it next.
func macState(key *MACKey, m *Meta) *blake3.Hasher {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic("walarchive: keyed blake3 with a 32-byte key: " + err.Error()) // cannot happen
	}
	var hdr [macOffset]byte
	putFixed(hdr[:], m)
	h.WriteString(macContext)
	h.Write(hdr[:])
	h.WriteString(m.Name)
	return h
}

// ComputeMAC returns the MAC of a file with the given metadata (Meta.MAC is
// ignored).
func ComputeMAC(key *MACKey, m Meta, data []byte) [32]byte {
	h := macState(key, &m)
	h.Write(data)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// putFixed writes the record's first macOffset bytes.
func putFixed(b []byte, m *Meta) {
	le := binary.LittleEndian
	copy(b[0:4], recordMagic[:])
	b[4] = recordVersion
	b[5] = uint8(m.Kind)
	le.PutUint16(b[6:], uint16(len(m.Name)))
	le.PutUint64(b[8:], m.SystemID)
	le.PutUint64(b[16:], uint64(m.Size))
	le.PutUint32(b[24:], m.SegSize)
	le.PutUint32(b[28:], 0)
}

// encodeFrame returns the skippable frame carrying m's record.
func encodeFrame(m *Meta) []byte {
	n := len(m.Name)
	b := make([]byte, frameHeaderSize+recordFixedSize+n)
	binary.LittleEndian.PutUint32(b[0:], frameMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(recordFixedSize+n))
	r := b[frameHeaderSize:]
	putFixed(r, m)
	copy(r[macOffset:recordFixedSize], m.MAC[:])
	copy(r[recordFixedSize:], m.Name)
	return b
}

// frameSize reads a skippable frame header and returns the record size it
// announces, checked against the bounds of a record.
func frameSize(hdr []byte) (int, error) {
	if len(hdr) < frameHeaderSize {
		return 0, fmt.Errorf("%d bytes is shorter than the record frame header", len(hdr))
	}
	if m := binary.LittleEndian.Uint32(hdr); m != frameMagic {
		return 0, fmt.Errorf("plaintext starts with %#08x, not the record frame magic %#08x", m, frameMagic)
	}
	n := binary.LittleEndian.Uint32(hdr[4:])
	if n < recordFixedSize+1 || n > recordFixedSize+maxNameLen {
		return 0, fmt.Errorf("record frame of %d bytes (want %d to %d)", n, recordFixedSize+1, recordFixedSize+maxNameLen)
	}
	return int(n), nil
}

// decodeRecord parses a record (the frame's payload). Every field is checked
// for what this version writes; the MAC is checked later, against the file.
func decodeRecord(b []byte) (Meta, error) {
	var m Meta
	if len(b) < recordFixedSize {
		return m, fmt.Errorf("record of %d bytes is shorter than %d", len(b), recordFixedSize)
	}
	le := binary.LittleEndian
	if [4]byte(b[0:4]) != recordMagic {
		return m, fmt.Errorf("record magic %q, want %q", b[0:4], recordMagic[:])
	}
	if b[4] != recordVersion {
		return m, fmt.Errorf("record version %d, this build reads %d", b[4], recordVersion)
	}
	m.Kind = Kind(b[5])
	if m.Kind < KindSegment || m.Kind > KindSummary {
		return m, fmt.Errorf("unknown record kind %d", b[5])
	}
	n := int(le.Uint16(b[6:]))
	if n == 0 || n > maxNameLen || len(b) != recordFixedSize+n {
		return m, fmt.Errorf("name of %d bytes in a record of %d", n, len(b))
	}
	m.SystemID = le.Uint64(b[8:])
	size := le.Uint64(b[16:])
	if size > MaxFileSize {
		return m, fmt.Errorf("file size %d is larger than %d", size, MaxFileSize)
	}
	m.Size = int64(size)
	m.SegSize = le.Uint32(b[24:])
	if err := pg.ValidateWALSegSize(uint64(m.SegSize)); err != nil {
		return m, fmt.Errorf("record: %w", err)
	}
	if le.Uint32(b[28:]) != 0 {
		return m, fmt.Errorf("reserved record field is %#x, not zero", le.Uint32(b[28:]))
	}
	copy(m.MAC[:], b[macOffset:recordFixedSize])
	m.Name = string(b[recordFixedSize:])
	for i := 0; i < len(m.Name); i++ {
		if c := m.Name[i]; c <= ' ' || c > '~' || c == '/' {
			return m, fmt.Errorf("name %q has a byte %#02x that no archived name has", m.Name, c)
		}
	}
	return m, nil
}
