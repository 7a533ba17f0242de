package pg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// WAL record layout, from PostgreSQL's access/xlogrecord.h (the same from 13
// to 18 except the image flags, see imageFlags) and the record types tidemark
// interprets (access/xlog_internal.h, access/xact.h, catalog/storage_xlog.h,
// commands/dbcommands_xlog.h, commands/tablespace.h).
const (
	WALRecordHeaderSize = 24 // SizeOfXLogRecord

	// Resource managers (access/rmgrlist.h), stable since 9.5.
	RMXLOG       = 0  // RM_XLOG_ID
	RMXact       = 1  // RM_XACT_ID
	RMSmgr       = 2  // RM_SMGR_ID
	RMDbase      = 4  // RM_DBASE_ID
	RMTablespace = 5  // RM_TBLSPC_ID
	RMHeap2      = 9  // RM_HEAP2_ID
	RMHeap       = 10 // RM_HEAP_ID

	// xl_info bits the record machinery owns (the high four belong to the
	// resource manager).
	XLRInfoMask         = 0x0F
	XLRSpecialRelUpdate = 0x01 // the record changes relation files beyond its block references

	// RM_XLOG_ID record types.
	XLOGCheckpointShutdown = 0x00
	XLOGCheckpointOnline   = 0x10
	XLOGNoop               = 0x20
	XLOGSwitch             = 0x40 // the rest of the segment is unused
	XLOGParameterChange    = 0x60
	XLOGEndOfRecovery      = 0x90
	XLOGFPIForHint         = 0xA0
	XLOGFPI                = 0xB0
	XLOGOverwriteContrec   = 0xD0
	XLOGCheckpointRedo     = 0xE0 // PostgreSQL 17+

	// RM_XACT_ID record types and xinfo bits.
	XactOpMask         = 0x70
	XactCommit         = 0x00
	XactPrepare        = 0x10
	XactAbort          = 0x20
	XactCommitPrepared = 0x30
	XactAbortPrepared  = 0x40
	XactHasInfo        = 0x80
	xactHasDBInfo      = 1 << 0
	xactHasSubxacts    = 1 << 1
	xactHasRelFiles    = 1 << 2

	// RM_SMGR_ID record types and truncation flags.
	SmgrCreate       = 0x10
	SmgrTruncate     = 0x20
	SmgrTruncateHeap = 0x0001
	SmgrTruncateVM   = 0x0002
	SmgrTruncateFSM  = 0x0004

	// RM_TBLSPC_ID record types.
	TablespaceCreate = 0x00
	TablespaceDrop   = 0x10

	// Block IDs of the headers after XLogRecord.
	BlockIDDataShort   = 255 // XLR_BLOCK_ID_DATA_SHORT: main data, 1-byte length
	BlockIDDataLong    = 254 // XLR_BLOCK_ID_DATA_LONG: main data, 4-byte length
	BlockIDOrigin      = 253 // XLR_BLOCK_ID_ORIGIN
	BlockIDTopLevelXID = 252 // XLR_BLOCK_ID_TOPLEVEL_XID
	MaxBlockID         = 32  // XLR_MAX_BLOCK_ID

	// fork_flags of a block header.
	BkpBlockForkMask = 0x0F
	BkpBlockHasImage = 0x10
	BkpBlockHasData  = 0x20
	BkpBlockWillInit = 0x40
	BkpBlockSameRel  = 0x80

	bkpImageHasHole = 0x01

	// MaxWALRecordSize bounds xl_tot_len (XLogRecordMaxSize, 1020 MB since
	// PostgreSQL 15; older servers never wrote larger records either).
	MaxWALRecordSize = 1020 << 20
)

// Database records (RM_DBASE_ID) changed meaning in PostgreSQL 15, which
// added CREATE DATABASE ... STRATEGY WAL_LOG (the default since) beside the
// old file copy.
const (
	dbaseCreateFileCopy   = 0x00 // XLOG_DBASE_CREATE (13, 14), XLOG_DBASE_CREATE_FILE_COPY (15+)
	dbaseCreateWALLog15   = 0x10 // 15+
	dbaseDrop15           = 0x20 // 15+
	dbaseDropBefore15     = 0x10 // 13, 14
	walLevelMinimal       = 0
	paramChangeWALLevelAt = 20 // offsetof(xl_parameter_change, wal_level)
)

// imageFlags are the bimg_info bits of a full-page image: PostgreSQL 15
// made room for LZ4 and zstd, moving BKPIMAGE_APPLY.
func imageFlags(major int) (apply, compressed uint8) {
	if major >= 15 {
		return 0x02, 0x04 | 0x08 | 0x10 // BKPIMAGE_APPLY, BKPIMAGE_COMPRESS_PGLZ|LZ4|ZSTD
	}
	return 0x04, 0x02 // BKPIMAGE_APPLY, BKPIMAGE_IS_COMPRESSED
}

// RelFileLocator names the files of a relation: tablespace, database and
// relfilenode (RelFileLocator; RelFileNode before PostgreSQL 16).
type RelFileLocator struct {
	Spc, DB, Rel uint32
}

func (l RelFileLocator) String() string { return fmt.Sprintf("%d/%d/%d", l.Spc, l.DB, l.Rel) }

// WALBlockRef is one block reference of a WAL record (DecodedBkpBlock).
type WALBlockRef struct {
	ID         uint8
	Rel        RelFileLocator
	Fork       Fork
	Block      uint32
	Flags      uint8 // the high bits of fork_flags (BkpBlock*)
	DataLen    uint16
	HasImage   bool
	ApplyImage bool
	ImageLen   uint16
}

// WALRecord is a decoded WAL record. Its slices point into the reader's
// buffers: they are valid only until the reader moves on.
type WALRecord struct {
	LSN    LSN    // where the record starts
	EndLSN LSN    // just past its last byte (page headers between its pieces included)
	Len    uint32 // xl_tot_len
	XID    uint32
	Prev   LSN // xl_prev
	Info   uint8
	RMID   uint8
	Origin uint16 // replication origin; 0 none
	TopXID uint32 // top-level transaction of a subtransaction's record; 0 none
	Blocks []WALBlockRef
	// Main is the main data (XLogRecGetData). MainLen is its declared
	// length; Main is shorter when the record was longer than the bytes
	// the reader keeps of it (Cut).
	Main    []byte
	MainLen uint32
	// Cut is set when only the first bytes of the record were kept (see
	// WALReader.Keep); its headers and CRC were checked all the same.
	Cut bool
}

// RecordType returns the record's type bits: xl_info without the bits the
// record machinery owns.
func (r *WALRecord) RecordType() uint8 { return r.Info &^ XLRInfoMask }

// ErrWALRecord is matched by every error DecodeWALRecord returns.
var ErrWALRecord = errors.New("invalid WAL record")

func recordErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrWALRecord, fmt.Sprintf(format, args...))
}

// CheckWALRecordCRC reports whether raw, a whole record, passes its CRC.
func CheckWALRecordCRC(raw []byte) bool {
	if len(raw) < WALRecordHeaderSize {
		return false
	}
	body := crc32.Update(0, castagnoli, raw[WALRecordHeaderSize:])
	return walRecordCRC(body, raw) == binary.LittleEndian.Uint32(raw[20:])
}

// walRecordCRC finishes a record's CRC-32C: body is the CRC of the bytes
// after XLogRecord, to which the header's first 20 bytes are added.
func walRecordCRC(body uint32, header []byte) uint32 {
	return crc32.Update(body, castagnoli, header[:20])
}

// DecodeWALRecord parses the record whose first len(b) bytes are b (all of
// them unless the record was cut) into rec, reusing rec.Blocks, with the
// checks PostgreSQL's DecodeXLogRecord makes of the headers. major picks the
// full-page image flags. The CRC is the caller's (see WALReader).
func DecodeWALRecord(b []byte, major int, rec *WALRecord) error {
	if len(b) < WALRecordHeaderSize {
		return recordErr("%d bytes is shorter than a record header", len(b))
	}
	le := binary.LittleEndian
	lsn, end := rec.LSN, rec.EndLSN
	*rec = WALRecord{LSN: lsn, EndLSN: end, Blocks: rec.Blocks[:0],
		Len: le.Uint32(b[0:]), XID: le.Uint32(b[4:]), Prev: LSN(le.Uint64(b[8:])), Info: b[16], RMID: b[17]}
	if rec.Len < WALRecordHeaderSize || rec.Len > MaxWALRecordSize {
		return recordErr("xl_tot_len %d", rec.Len)
	}
	if uint32(len(b)) > rec.Len {
		b = b[:rec.Len]
	}
	rec.Cut = uint32(len(b)) < rec.Len
	applyBit, compressedBits := imageFlags(major)
	pos := WALRecordHeaderSize
	remaining := rec.Len - WALRecordHeaderSize // bytes after the headers read so far
	var datatotal uint32
	var last RelFileLocator
	haveLast := false
	maxID := -1
	take := func(n int) ([]byte, error) {
		if uint32(n) > remaining {
			return nil, recordErr("headers run past the record's %d bytes", rec.Len)
		}
		if pos+n > len(b) {
			return nil, recordErr("headers of a %d-byte record run past the %d bytes kept", rec.Len, len(b))
		}
		s := b[pos : pos+n]
		pos += n
		remaining -= uint32(n)
		return s, nil
	}
	mainLen := uint32(0)
headers:
	for remaining > datatotal {
		idb, err := take(1)
		if err != nil {
			return err
		}
		switch id := idb[0]; {
		case id == BlockIDDataShort:
			l, err := take(1)
			if err != nil {
				return err
			}
			mainLen = uint32(l[0])
			datatotal += mainLen
			break headers
		case id == BlockIDDataLong:
			l, err := take(4)
			if err != nil {
				return err
			}
			mainLen = le.Uint32(l)
			if mainLen > rec.Len {
				return recordErr("main data of %d bytes in a %d-byte record", mainLen, rec.Len)
			}
			datatotal += mainLen
			break headers
		case id == BlockIDOrigin:
			o, err := take(2)
			if err != nil {
				return err
			}
			rec.Origin = le.Uint16(o)
		case id == BlockIDTopLevelXID:
			x, err := take(4)
			if err != nil {
				return err
			}
			rec.TopXID = le.Uint32(x)
		case id <= MaxBlockID:
			if int(id) <= maxID {
				return recordErr("out-of-order block_id %d", id)
			}
			maxID = int(id)
			h, err := take(3)
			if err != nil {
				return err
			}
			blk := WALBlockRef{ID: id, Fork: Fork(h[0] & BkpBlockForkMask), Flags: h[0] &^ BkpBlockForkMask, DataLen: le.Uint16(h[1:])}
			hasData := blk.Flags&BkpBlockHasData != 0
			if hasData != (blk.DataLen != 0) {
				return recordErr("block %d: BKPBLOCK_HAS_DATA %v with data length %d", id, hasData, blk.DataLen)
			}
			datatotal += uint32(blk.DataLen)
			if blk.Flags&BkpBlockHasImage != 0 {
				ih, err := take(5)
				if err != nil {
					return err
				}
				blk.HasImage = true
				blk.ImageLen = le.Uint16(ih)
				holeOff := le.Uint16(ih[2:])
				info := ih[4]
				blk.ApplyImage = info&applyBit != 0
				hasHole := info&bkpImageHasHole != 0
				if info&compressedBits != 0 {
					if hasHole {
						if _, err := take(2); err != nil { // hole_length
							return err
						}
					}
				} else if !hasHole && holeOff != 0 {
					return recordErr("block %d: hole offset %d without BKPIMAGE_HAS_HOLE", id, holeOff)
				}
				if hasHole && holeOff == 0 {
					return recordErr("block %d: BKPIMAGE_HAS_HOLE with hole offset 0", id)
				}
				datatotal += uint32(blk.ImageLen)
			}
			if blk.Flags&BkpBlockSameRel == 0 {
				r, err := take(12)
				if err != nil {
					return err
				}
				last = RelFileLocator{Spc: le.Uint32(r), DB: le.Uint32(r[4:]), Rel: le.Uint32(r[8:])}
				haveLast = true
			} else if !haveLast {
				return recordErr("block %d: BKPBLOCK_SAME_REL without a previous relation", id)
			}
			blk.Rel = last
			n, err := take(4)
			if err != nil {
				return err
			}
			blk.Block = le.Uint32(n)
			rec.Blocks = append(rec.Blocks, blk)
		default:
			return recordErr("invalid block_id %d", id)
		}
	}
	if remaining != datatotal {
		return recordErr("%d bytes after the headers, %d announced", remaining, datatotal)
	}
	rec.MainLen = mainLen
	if start := rec.Len - mainLen; uint32(len(b)) > start {
		rec.Main = b[start:]
	}
	return nil
}

// pgEpoch is where TimestampTz counts microseconds from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// TimestampTz converts PostgreSQL's TimestampTz (microseconds since
// 2000-01-01 UTC) to a time.
func TimestampTz(us int64) time.Time { return pgEpoch.Add(time.Duration(us) * time.Microsecond) }

// ToTimestampTz is the inverse of TimestampTz.
func ToTimestampTz(t time.Time) int64 { return int64(t.Sub(pgEpoch) / time.Microsecond) }

// LastCommitTime returns the timestamp of the last commit or abort record
// that begins in a WAL segment (its whole plaintext) and ends in it: the
// latest time a recovery_target_time can be reached with the WAL up to this
// segment. found is false when the segment has none. Records are
// CRC-checked; scanning stops at the first invalid one, as recovery would.
func LastCommitTime(seg []byte) (t time.Time, found bool, err error) {
	hdr, err := ParseSegmentHeader(seg)
	if err != nil {
		return t, false, err
	}
	if len(seg) != int(hdr.SegSize) {
		return t, false, fmt.Errorf("WAL segment of %d bytes with segment size %d", len(seg), hdr.SegSize)
	}
	r, err := NewWALReader(hdr.PageAddr, hdr.SegSize, hdr.BlockSize)
	if err != nil {
		return t, false, err
	}
	r.Keep = 64 << 10
	r.OnRecord = func(rec *WALRecord) error {
		if rec.RMID != RMXact {
			return nil
		}
		switch rec.Info & XactOpMask {
		case XactCommit, XactAbort, XactCommitPrepared, XactAbortPrepared:
			if len(rec.Main) >= 8 {
				t, found = TimestampTz(int64(binary.LittleEndian.Uint64(rec.Main))), true
			}
		}
		return nil
	}
	if _, err := r.Write(seg); err != nil {
		return t, found, err
	}
	return t, found, nil
}
