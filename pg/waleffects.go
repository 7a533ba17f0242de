package pg

import (
	"encoding/binary"
	"fmt"
)

// WALEffectKind says what a WAL record did to the cluster's relation files.
type WALEffectKind uint8

// The effects WALRecordEffects reports. What they mean for a backup that
// compares files with an earlier one: a changed block is read again; a fork
// truncated (or created, or dropped: truncated to 0) is read again from
// that length on; everything in a database or tablespace directory made or
// removed is new; and WAL whose effects cannot be told makes the range it
// lies in unusable.
const (
	// EffectBlock: block Block of fork Fork of relation Rel changed
	// (a block reference of the record).
	EffectBlock WALEffectKind = iota + 1
	// EffectTruncate: fork Fork of Rel was cut to Block blocks; 0 when it
	// was created or dropped (XLOG_SMGR_CREATE, XLOG_SMGR_TRUNCATE, the
	// relations a commit or abort removes).
	EffectTruncate
	// EffectDatabase: the directory of database Rel.DB in tablespace
	// Rel.Spc was created or dropped (every CREATE DATABASE strategy,
	// DROP DATABASE, ALTER DATABASE SET TABLESPACE): every file in it is
	// new.
	EffectDatabase
	// EffectTablespace: tablespace Rel.Spc was created or dropped.
	EffectTablespace
	// EffectUnknown: the record changes relation files in a way tidemark
	// cannot tell from it (XLR_SPECIAL_REL_UPDATE on a record it does not
	// know, or one whose data was cut): nothing can be concluded from WAL
	// that contains it.
	EffectUnknown
	// EffectMinimal: the server runs with wal_level = minimal from here,
	// where relation files change without WAL.
	EffectMinimal
)

func (k WALEffectKind) String() string {
	switch k {
	case EffectBlock:
		return "block"
	case EffectTruncate:
		return "truncate"
	case EffectDatabase:
		return "database"
	case EffectTablespace:
		return "tablespace"
	case EffectUnknown:
		return "unknown"
	case EffectMinimal:
		return "wal_level=minimal"
	}
	return fmt.Sprintf("WALEffectKind(%d)", uint8(k))
}

// WALEffect is one thing a record did to relation files (WALRecordEffects).
type WALEffect struct {
	Kind  WALEffectKind
	Rel   RelFileLocator
	Fork  Fork
	Block uint32
}

// WALRecordEffects calls fn with every effect of rec on relation files: its
// block references (but those of free space maps, which PostgreSQL does not
// WAL-log fully, and which a backup therefore reads whole), and what the
// records that change files without block references do, the same set
// PostgreSQL's WAL summarizer handles (walsummarizer.c) plus tablespaces.
// major is the version that wrote the record.
func WALRecordEffects(rec *WALRecord, major int, fn func(WALEffect)) {
	for i := range rec.Blocks {
		b := &rec.Blocks[i]
		if b.Fork != ForkFSM {
			fn(WALEffect{Kind: EffectBlock, Rel: b.Rel, Fork: b.Fork, Block: b.Block})
		}
	}
	// Of a record cut short (WALReader.Keep) Main holds what was kept:
	// every parser below checks that what it reads is there.
	main := rec.Main
	le := binary.LittleEndian
	typ := rec.RecordType()
	unknown := func() { fn(WALEffect{Kind: EffectUnknown}) }
	rel := func(b []byte) RelFileLocator {
		return RelFileLocator{Spc: le.Uint32(b), DB: le.Uint32(b[4:]), Rel: le.Uint32(b[8:])}
	}
	switch rec.RMID {
	case RMXLOG:
		// wal_level can drop to minimal only across a restart, which
		// writes XLOG_PARAMETER_CHANGE; PostgreSQL 17 also notes it in
		// XLOG_CHECKPOINT_REDO.
		switch {
		case typ == XLOGParameterChange && len(main) >= paramChangeWALLevelAt+4:
			if int32(le.Uint32(main[paramChangeWALLevelAt:])) == walLevelMinimal {
				fn(WALEffect{Kind: EffectMinimal})
			}
		case typ == XLOGCheckpointRedo && major >= 17 && len(main) >= 4:
			if int32(le.Uint32(main)) == walLevelMinimal {
				fn(WALEffect{Kind: EffectMinimal})
			}
		}
	case RMSmgr:
		switch typ {
		case SmgrCreate: // xl_smgr_create: RelFileLocator, ForkNumber
			if len(main) < 16 {
				unknown()
				return
			}
			if f := Fork(le.Uint32(main[12:])); f != ForkFSM {
				fn(WALEffect{Kind: EffectTruncate, Rel: rel(main), Fork: f})
			}
		case SmgrTruncate: // xl_smgr_truncate: BlockNumber, RelFileLocator, flags
			if len(main) < 20 {
				unknown()
				return
			}
			blk, r, flags := le.Uint32(main), rel(main[4:]), le.Uint32(main[16:])
			if flags&SmgrTruncateHeap != 0 {
				fn(WALEffect{Kind: EffectTruncate, Rel: r, Fork: ForkMain, Block: blk})
			}
			if flags&SmgrTruncateVM != 0 {
				// The visibility map shrinks to the page holding
				// blk's bits, and that page changes without WAL:
				// say it was cut to nothing.
				fn(WALEffect{Kind: EffectTruncate, Rel: r, Fork: ForkVM, Block: 0})
			}
		default:
			if rec.Info&XLRSpecialRelUpdate != 0 {
				unknown()
			}
		}
	case RMDbase:
		dbaseEffects(rec, main, major, fn)
	case RMTablespace:
		switch typ {
		case TablespaceCreate, TablespaceDrop: // xl_tblspc_*_rec: ts_id first
			if len(main) < 4 {
				unknown()
				return
			}
			fn(WALEffect{Kind: EffectTablespace, Rel: RelFileLocator{Spc: le.Uint32(main)}})
		}
	case RMXact:
		switch rec.Info & XactOpMask {
		case XactCommit, XactCommitPrepared, XactAbort, XactAbortPrepared:
			rels, ok := xactDroppedRels(rec.Info, main)
			if !ok {
				unknown()
				return
			}
			for i := 0; i+12 <= len(rels); i += 12 {
				r := rel(rels[i:])
				for _, f := range []Fork{ForkMain, ForkVM, ForkInit} {
					fn(WALEffect{Kind: EffectTruncate, Rel: r, Fork: f})
				}
			}
		}
	default:
		if rec.Info&XLRSpecialRelUpdate != 0 {
			unknown()
		}
	}
}

// dbaseEffects handles RM_DBASE_ID records: whichever way a database
// directory is made (file copy, or WAL_LOG whose blocks follow as records)
// or removed, everything in it is new.
func dbaseEffects(rec *WALRecord, main []byte, major int, fn func(WALEffect)) {
	le := binary.LittleEndian
	typ := rec.RecordType()
	drop := dbaseDrop15
	if major < 15 {
		drop = dbaseDropBefore15
	}
	switch {
	case typ == dbaseCreateFileCopy || major >= 15 && typ == dbaseCreateWALLog15:
		// db_id, tablespace_id first in both
		if len(main) < 8 {
			fn(WALEffect{Kind: EffectUnknown})
			return
		}
		fn(WALEffect{Kind: EffectDatabase, Rel: RelFileLocator{Spc: le.Uint32(main[4:]), DB: le.Uint32(main)}})
	case typ == uint8(drop):
		// xl_dbase_drop_rec: db_id, ntablespaces, tablespace_ids[]
		if len(main) < 8 {
			fn(WALEffect{Kind: EffectUnknown})
			return
		}
		db, n := le.Uint32(main), int32(le.Uint32(main[4:]))
		if n < 0 || int64(len(main)) < 8+4*int64(n) {
			fn(WALEffect{Kind: EffectUnknown})
			return
		}
		for i := range int(n) {
			fn(WALEffect{Kind: EffectDatabase, Rel: RelFileLocator{Spc: le.Uint32(main[8+4*i:]), DB: db}})
		}
	default:
		if rec.Info&XLRSpecialRelUpdate != 0 {
			fn(WALEffect{Kind: EffectUnknown})
		}
	}
}

// xactDroppedRels returns the RelFileLocators (12 bytes each) a commit or
// abort record lists as removed (ParseCommitRecord, ParseAbortRecord: the
// same layout for both from 13 to 18). ok is false when main is too short
// for what its flags announce.
func xactDroppedRels(info uint8, main []byte) ([]byte, bool) {
	le := binary.LittleEndian
	pos := 8 // xact_time
	if len(main) < pos {
		return nil, false
	}
	var xinfo uint32
	if info&XactHasInfo != 0 {
		if len(main) < pos+4 {
			return nil, false
		}
		xinfo = le.Uint32(main[pos:])
		pos += 4
	}
	if xinfo&xactHasDBInfo != 0 {
		pos += 8
	}
	if xinfo&xactHasSubxacts != 0 {
		if len(main) < pos+4 {
			return nil, false
		}
		n := int64(int32(le.Uint32(main[pos:])))
		if n < 0 || n > int64(len(main)) {
			return nil, false
		}
		pos += 4 + 4*int(n)
	}
	if xinfo&xactHasRelFiles == 0 {
		return nil, len(main) >= pos
	}
	if len(main) < pos+4 {
		return nil, false
	}
	n := int64(int32(le.Uint32(main[pos:])))
	pos += 4
	if n < 0 || int64(len(main)) < int64(pos)+12*n {
		return nil, false
	}
	return main[pos : pos+12*int(n)], true
}
