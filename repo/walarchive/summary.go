package walarchive

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/tidemarkdb/tidemark/pg"
)

// A block summary says what the WAL records that begin in one archived
// segment did to the cluster's relation files: which blocks of which
// relation forks they changed, which forks they created, truncated or
// removed, which database and tablespace directories they made or removed.
// Whatever archives a segment (wal-push, the agent, wal-receive: every path
// goes through PutFromAhead) writes its summary beside it, so that an
// incremental backup can read only the pages the WAL since its parent
// touched (docs/format.md §10 and docs/wal.md).
//
// A record that begins in segment N and ends in N+1 is summarized by N's
// summary when the bytes in N tell its effects (its headers are there and
// it is not one of the few records whose main data matters); otherwise N's
// summary keeps the record's first bytes (Pending) and N+1's keeps the
// first bytes of its continuation (Continuation), and whoever reads both
// joins them (Join).

// summaryMagic starts a summary's plaintext.
var summaryMagic = [4]byte{'T', 'M', 'W', 'S'}

const (
	summaryVersion = 1
	// SummarySuffix is appended to a segment's name to name its summary.
	SummarySuffix = ".summary"
	// contKeep is how many bytes of a continuation a summary keeps: enough
	// for the headers of any record (33 block headers of at most 27 bytes)
	// and the whole of the small records whose main data matters.
	contKeep = 8 << 10
	// pendKeep bounds the bytes of a pending record a summary keeps.
	pendKeep = 64 << 10
	// maxSummarySize bounds a summary's plaintext: a 1 GiB segment of
	// block references, two bytes each, would stay below it.
	maxSummarySize = 1 << 30
)

// Summary flags.
const (
	summaryComplete = 1 << 0 // every record that begins in the segment was read
	summaryMinimal  = 1 << 1 // wal_level=minimal WAL (pg.EffectMinimal)
	summaryUnknown  = 1 << 2 // a record whose effects cannot be told (pg.EffectUnknown)
	summaryPendDone = 1 << 3 // the pending record's effects are in the summary already
	summaryContDrop = 1 << 4 // the continuation was cut short by XLP_FIRST_IS_OVERWRITE_CONTRECORD
	summaryAllFlags = summaryComplete | summaryMinimal | summaryUnknown | summaryPendDone | summaryContDrop
)

// NoLimit is RelChanges.Limit of a fork that was never truncated.
const NoLimit = math.MaxUint32

// RelFork names one fork of a relation.
type RelFork struct {
	Rel  pg.RelFileLocator
	Fork pg.Fork
}

func compareRelFork(a, b RelFork) int {
	return cmp.Or(cmp.Compare(a.Rel.Spc, b.Rel.Spc), cmp.Compare(a.Rel.DB, b.Rel.DB),
		cmp.Compare(a.Rel.Rel, b.Rel.Rel), cmp.Compare(a.Fork, b.Fork))
}

// RelChanges is what a summary says of one relation fork: the blocks
// changed (sorted, unique) and the smallest length in blocks it was cut to
// (0 when it was created or removed; NoLimit when never).
type RelChanges struct {
	RelFork
	Limit  uint32
	Blocks []uint32
}

// DBDir is a database directory (tablespace, database) that was created or
// dropped.
type DBDir struct {
	Spc, DB uint32
}

// Summary is one segment's block summary.
type Summary struct {
	Timeline pg.TimelineID
	Segment  pg.SegNo
	SegSize  uint32
	Major    int
	// SegmentMAC is the MAC of the segment object the summary was made
	// from (Meta.MAC): it ties the summary to those bytes.
	SegmentMAC [32]byte
	// Complete: every record that begins in the segment was read. When
	// the valid WAL ended early (a segment read while PostgreSQL wrote it,
	// damage), End is where, and Reason why.
	Complete bool
	End      pg.LSN
	Reason   string
	// Minimal: WAL written with wal_level=minimal, where files change
	// without WAL; Unknown: a record whose effects cannot be told, the
	// first at UnknownAt.
	Minimal   bool
	Unknown   bool
	UnknownAt pg.LSN
	Records   int64

	// Continuation: the segment starts with ContTotal bytes (xlp_rem_len
	// of its first page) of a record begun in the previous segment; Cont
	// is the first of them (at most contKeep). FirstPageInfo is the first
	// page's xlp_info. ContDropped: the continuation was cut short by a
	// page marked XLP_FIRST_IS_OVERWRITE_CONTRECORD (the record was never
	// completed).
	FirstPageInfo uint16
	ContTotal     uint32
	Cont          []byte
	ContDropped   bool
	// Pending: the record at PendLSN of PendTotal bytes begins in this
	// segment (PendInSeg of its bytes) and ends in a later one. PendDone:
	// its effects are in this summary; otherwise Pend holds its first
	// bytes (at most pendKeep; fewer than PendInSeg means they were too
	// many to keep).
	PendLSN   pg.LSN
	PendTotal uint32
	PendInSeg uint32
	PendDone  bool
	Pend      []byte

	Tablespaces []uint32
	Databases   []DBDir
	Rels        []RelChanges
}

// SegmentStart is the LSN of the segment's first byte.
func (s *Summary) SegmentStart() pg.LSN { return s.Segment.Start(s.SegSize) }

// Name returns the object name of the summary: the segment's name and
// SummarySuffix.
func (s *Summary) Name() string {
	return pg.SegmentName(s.Timeline, s.Segment, s.SegSize) + SummarySuffix
}

// Blocks returns how many block references the summary holds.
func (s *Summary) Blocks() int {
	n := 0
	for i := range s.Rels {
		n += len(s.Rels[i].Blocks)
	}
	return n
}

// summarizer builds a Summary from a segment's bytes, fed in order.
type summarizer struct {
	s    Summary
	r    *pg.WALReader
	rels map[RelFork]*relBuild
	// recent are the relation forks of the last block effects, newest
	// first: WAL comes in runs of records on one relation (a heap and its
	// index), and a map lookup per record was a quarter of the summary's
	// cost.
	recent [2]recentRel
	dbs    map[DBDir]bool
	spcs   map[uint32]bool
	pend   pg.WALRecord
	err    error
	inited bool
	upTo   pg.LSN // records from here on are left out; 0: none
}

type recentRel struct {
	k RelFork
	b *relBuild
}

type relBuild struct {
	limit  uint32
	blocks []uint32
	sorted int // blocks[:sorted] is sorted and unique
}

// newSummarizer starts the summary of segment seg of timeline tli.
func newSummarizer(tli pg.TimelineID, seg pg.SegNo, segSize uint32) *summarizer {
	return &summarizer{s: Summary{Timeline: tli, Segment: seg, SegSize: segSize},
		rels: map[RelFork]*relBuild{}, dbs: map[DBDir]bool{}, spcs: map[uint32]bool{}}
}

// Write feeds the next bytes of the segment.
func (z *summarizer) Write(p []byte) (int, error) {
	if !z.inited {
		z.inited = true
		h, err := pg.ParseSegmentHeader(p)
		if err == nil {
			z.r, err = pg.NewWALReader(z.s.SegmentStart(), z.s.SegSize, h.BlockSize)
		}
		if err != nil {
			z.err = fmt.Errorf("summarize %s: %w", z.s.Name(), err)
			return len(p), nil
		}
		z.s.FirstPageInfo = h.Info
		z.s.Major = h.Major
		z.r.OnRecord = z.record
		z.r.OnContinuation = func(b []byte, off, total uint32) {
			z.s.ContTotal = total
			if k := contKeep - len(z.s.Cont); k > 0 {
				z.s.Cont = append(z.s.Cont, b[:min(k, len(b))]...)
			}
		}
	}
	if z.r == nil {
		return len(p), nil
	}
	return z.r.Write(p)
}

func (z *summarizer) record(rec *pg.WALRecord) error {
	if z.upTo != 0 && rec.LSN >= z.upTo {
		return nil
	}
	z.s.Records++
	pg.WALRecordEffects(rec, z.r.Major(), func(e pg.WALEffect) { z.effect(rec.LSN, e) })
	return nil
}

func (z *summarizer) effect(lsn pg.LSN, e pg.WALEffect) {
	switch e.Kind {
	case pg.EffectBlock, pg.EffectTruncate:
		k := RelFork{Rel: e.Rel, Fork: e.Fork}
		var b *relBuild
		switch {
		case z.recent[0].b != nil && z.recent[0].k == k:
			b = z.recent[0].b
		case z.recent[1].b != nil && z.recent[1].k == k:
			b = z.recent[1].b
			z.recent[0], z.recent[1] = z.recent[1], z.recent[0]
		default:
			if b = z.rels[k]; b == nil {
				b = &relBuild{limit: NoLimit}
				z.rels[k] = b
			}
			z.recent[1], z.recent[0] = z.recent[0], recentRel{k, b}
		}
		if e.Kind == pg.EffectTruncate {
			b.limit = min(b.limit, e.Block)
			return
		}
		if n := len(b.blocks); n > 0 && b.blocks[n-1] == e.Block {
			return // the same block again, as hot pages come
		}
		b.blocks = append(b.blocks, e.Block)
		if len(b.blocks) >= 2*b.sorted+1024 {
			b.compact()
		}
	case pg.EffectDatabase:
		z.dbs[DBDir{Spc: e.Rel.Spc, DB: e.Rel.DB}] = true
	case pg.EffectTablespace:
		z.spcs[e.Rel.Spc] = true
	case pg.EffectMinimal:
		z.s.Minimal = true
	case pg.EffectUnknown:
		if !z.s.Unknown {
			z.s.Unknown, z.s.UnknownAt = true, lsn
		}
	}
}

func (b *relBuild) compact() {
	slices.Sort(b.blocks)
	b.blocks = slices.Compact(b.blocks)
	b.sorted = len(b.blocks)
}

// finish returns the summary once the whole segment was written.
func (z *summarizer) finish() (*Summary, error) {
	if z.err != nil {
		return nil, z.err
	}
	if z.r == nil {
		return nil, fmt.Errorf("summarize %s: no bytes", z.s.Name())
	}
	s := &z.s
	end := s.Segment.Start(s.SegSize).Add(uint64(s.SegSize))
	s.Complete, s.End = true, end
	s.ContDropped = z.r.ContinuationDropped()
	if ended, at, why := z.r.Ended(); ended {
		s.Complete, s.End, s.Reason = false, at, why
	} else if lsn, total, got, head, ok := z.r.Pending(); ok && (z.upTo == 0 || lsn < z.upTo) {
		s.PendLSN, s.PendTotal, s.PendInSeg = lsn, total, got
		z.pending(head)
	}
	for k, b := range z.rels {
		b.compact()
		s.Rels = append(s.Rels, RelChanges{RelFork: k, Limit: b.limit, Blocks: b.blocks})
	}
	slices.SortFunc(s.Rels, func(a, b RelChanges) int { return compareRelFork(a.RelFork, b.RelFork) })
	for d := range z.dbs {
		s.Databases = append(s.Databases, d)
	}
	slices.SortFunc(s.Databases, func(a, b DBDir) int { return cmp.Or(cmp.Compare(a.Spc, b.Spc), cmp.Compare(a.DB, b.DB)) })
	for t := range z.spcs {
		s.Tablespaces = append(s.Tablespaces, t)
	}
	slices.Sort(s.Tablespaces)
	return s, nil
}

// pending settles the record that continues in the next segment: when its
// kept head holds all of its headers and its kind's effects are its block
// references, they go into the summary now; otherwise the head is kept for
// Join.
func (z *summarizer) pending(head []byte) {
	s := &z.s
	if blocksOnly(head) {
		z.pend.LSN = s.PendLSN
		if err := pg.DecodeWALRecord(head, s.Major, &z.pend); err == nil {
			pg.WALRecordEffects(&z.pend, s.Major, func(e pg.WALEffect) { z.effect(s.PendLSN, e) })
			s.PendDone = true
			return
		}
	}
	s.Pend = bytes.Clone(head[:min(len(head), pendKeep)])
}

// blocksOnly reports whether a record (its first bytes) is of a kind whose
// only effects on files are its block references: no main data needed
// (pg.WALRecordEffects reads main data of these alone).
func blocksOnly(head []byte) bool {
	if len(head) < pg.WALRecordHeaderSize {
		return false
	}
	info, rmid := head[16], head[17]
	if info&pg.XLRSpecialRelUpdate != 0 {
		return false
	}
	switch rmid {
	case pg.RMXLOG:
		t := info &^ pg.XLRInfoMask
		return t != pg.XLOGParameterChange && t != pg.XLOGCheckpointRedo
	case pg.RMXact:
		switch info & pg.XactOpMask {
		case pg.XactCommit, pg.XactCommitPrepared, pg.XactAbort, pg.XactAbortPrepared:
			return false
		}
	case pg.RMSmgr, pg.RMDbase, pg.RMTablespace:
		return false
	}
	return true
}

// Join returns the effects of the record that summary prev left pending,
// with the continuation next (the summary of the following segment along
// the timeline history) begins with. ok is false when they cannot be told
// (the bytes needed were not kept, the two do not fit together): WAL that
// holds that record must then be read another way. dropped says the record
// was never completed (a crash, XLP_FIRST_IS_OVERWRITE_CONTRECORD): it has
// no effects.
func Join(prev, next *Summary, fn func(pg.WALEffect)) (dropped, ok bool) {
	if prev.PendTotal == 0 || prev.PendDone {
		return false, true
	}
	if next.FirstPageInfo&pg.XLPFirstIsContRecord == 0 {
		// The continuation never came: recovery skips the record if
		// the page says it was overwritten, and stops otherwise.
		return true, next.FirstPageInfo&pg.XLPFirstIsOverwriteContRecord != 0
	}
	if next.ContDropped {
		return true, true // came in part, then was overwritten
	}
	if uint32(len(prev.Pend)) < prev.PendInSeg || next.ContTotal != prev.PendTotal-prev.PendInSeg {
		return false, false
	}
	b := append(bytes.Clone(prev.Pend), next.Cont...)
	rec := pg.WALRecord{LSN: prev.PendLSN}
	full := uint32(len(b)) >= prev.PendTotal
	if full {
		b = b[:prev.PendTotal]
		if !pg.CheckWALRecordCRC(b) {
			return false, false
		}
	} else if !blocksOnly(b) {
		return false, false // main data is needed and not all here
	}
	if err := pg.DecodeWALRecord(b, prev.Major, &rec); err != nil {
		return false, false
	}
	unknown := false
	pg.WALRecordEffects(&rec, prev.Major, func(e pg.WALEffect) {
		if e.Kind == pg.EffectUnknown {
			unknown = true
		}
		fn(e)
	})
	return false, !unknown
}

// Encode returns the summary's plaintext (docs/format.md §10.1).
func (s *Summary) Encode() []byte {
	le := binary.LittleEndian
	b := make([]byte, 0, 128+len(s.Cont)+len(s.Pend)+4*s.Blocks())
	b = append(b, summaryMagic[:]...)
	b = append(b, summaryVersion, s.flags(), uint8(s.Major), 0)
	b = le.AppendUint32(b, uint32(s.Timeline))
	b = le.AppendUint32(b, s.SegSize)
	b = le.AppendUint64(b, uint64(s.Segment))
	b = le.AppendUint64(b, uint64(s.End))
	b = le.AppendUint64(b, uint64(s.UnknownAt))
	b = le.AppendUint64(b, uint64(s.Records))
	b = append(b, s.SegmentMAC[:]...)
	b = le.AppendUint16(b, s.FirstPageInfo)
	b = binary.AppendUvarint(b, uint64(s.ContTotal))
	b = appendBytes(b, s.Cont)
	b = binary.AppendUvarint(b, uint64(s.PendLSN))
	b = binary.AppendUvarint(b, uint64(s.PendTotal))
	b = binary.AppendUvarint(b, uint64(s.PendInSeg))
	b = appendBytes(b, s.Pend)
	b = appendBytes(b, []byte(s.Reason))
	b = binary.AppendUvarint(b, uint64(len(s.Tablespaces)))
	for _, t := range s.Tablespaces {
		b = binary.AppendUvarint(b, uint64(t))
	}
	b = binary.AppendUvarint(b, uint64(len(s.Databases)))
	for _, d := range s.Databases {
		b = binary.AppendUvarint(b, uint64(d.Spc))
		b = binary.AppendUvarint(b, uint64(d.DB))
	}
	b = binary.AppendUvarint(b, uint64(len(s.Rels)))
	for _, r := range s.Rels {
		b = binary.AppendUvarint(b, uint64(r.Rel.Spc))
		b = binary.AppendUvarint(b, uint64(r.Rel.DB))
		b = binary.AppendUvarint(b, uint64(r.Rel.Rel))
		b = append(b, uint8(r.Fork))
		lim := uint64(0)
		if r.Limit != NoLimit {
			lim = uint64(r.Limit) + 1
		}
		b = binary.AppendUvarint(b, lim)
		b = binary.AppendUvarint(b, uint64(len(r.Blocks)))
		prev := uint32(0)
		for i, blk := range r.Blocks {
			if i == 0 {
				b = binary.AppendUvarint(b, uint64(blk))
			} else {
				b = binary.AppendUvarint(b, uint64(blk-prev-1))
			}
			prev = blk
		}
	}
	return b
}

func (s *Summary) flags() uint8 {
	var f uint8
	if s.Complete {
		f |= summaryComplete
	}
	if s.Minimal {
		f |= summaryMinimal
	}
	if s.Unknown {
		f |= summaryUnknown
	}
	if s.PendDone {
		f |= summaryPendDone
	}
	if s.ContDropped {
		f |= summaryContDrop
	}
	return f
}

func appendBytes(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// summaryFixedSize is the fixed part of the plaintext, up to the first
// uvarint.
const summaryFixedSize = 4 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 32 + 2

// ErrInvalidSummary is matched by every error DecodeSummary returns.
var ErrInvalidSummary = errors.New("invalid block summary")

// DecodeSummary parses a summary's plaintext, checking every count and
// length against the bytes there are.
func DecodeSummary(b []byte) (*Summary, error) {
	fail := func(format string, args ...any) (*Summary, error) {
		return nil, fmt.Errorf("%w: %s", ErrInvalidSummary, fmt.Sprintf(format, args...))
	}
	if len(b) < summaryFixedSize {
		return fail("%d bytes is shorter than a summary", len(b))
	}
	if [4]byte(b[:4]) != summaryMagic {
		return fail("magic %q", b[:4])
	}
	if b[4] != summaryVersion {
		return fail("version %d, this build reads %d", b[4], summaryVersion)
	}
	flags := b[5]
	if flags&^summaryAllFlags != 0 || b[7] != 0 {
		return fail("flags %#x, reserved %#x", flags, b[7])
	}
	le := binary.LittleEndian
	s := &Summary{Major: int(b[6]), Timeline: pg.TimelineID(le.Uint32(b[8:])), SegSize: le.Uint32(b[12:]),
		Segment: pg.SegNo(le.Uint64(b[16:])), End: pg.LSN(le.Uint64(b[24:])), UnknownAt: pg.LSN(le.Uint64(b[32:])),
		Records:  int64(le.Uint64(b[40:])),
		Complete: flags&summaryComplete != 0, Minimal: flags&summaryMinimal != 0, Unknown: flags&summaryUnknown != 0,
		PendDone: flags&summaryPendDone != 0, ContDropped: flags&summaryContDrop != 0}
	copy(s.SegmentMAC[:], b[48:80])
	s.FirstPageInfo = le.Uint16(b[80:])
	if err := pg.ValidateWALSegSize(uint64(s.SegSize)); err != nil {
		return fail("%v", err)
	}
	if pg.CheckMajor(s.Major) != nil || s.Timeline == 0 || s.Records < 0 {
		return fail("PostgreSQL %d, timeline %d, %d records", s.Major, s.Timeline, s.Records)
	}
	d := &summaryDecoder{b: b[summaryFixedSize:]}
	s.ContTotal = uint32(d.uvarint(math.MaxUint32))
	s.Cont = d.bytes(contKeep)
	s.PendLSN = pg.LSN(d.uvarint(math.MaxUint64))
	s.PendTotal = uint32(d.uvarint(pg.MaxWALRecordSize))
	s.PendInSeg = uint32(d.uvarint(uint64(s.SegSize)))
	s.Pend = d.bytes(pendKeep)
	s.Reason = string(d.bytes(1024))
	n := d.count(1)
	for range n {
		s.Tablespaces = append(s.Tablespaces, uint32(d.uvarint(math.MaxUint32)))
	}
	n = d.count(2)
	for range n {
		s.Databases = append(s.Databases, DBDir{Spc: uint32(d.uvarint(math.MaxUint32)), DB: uint32(d.uvarint(math.MaxUint32))})
	}
	n = d.count(6)
	for i := 0; i < n && d.err == nil; i++ {
		var r RelChanges
		r.Rel = pg.RelFileLocator{Spc: uint32(d.uvarint(math.MaxUint32)), DB: uint32(d.uvarint(math.MaxUint32)), Rel: uint32(d.uvarint(math.MaxUint32))}
		r.Fork = pg.Fork(d.byte())
		r.Limit = NoLimit
		if lim := d.uvarint(math.MaxUint32); lim > 0 {
			r.Limit = uint32(lim - 1)
		}
		nb := d.count(1)
		if nb > 0 {
			r.Blocks = make([]uint32, 0, nb)
		}
		var prev uint64
		for j := 0; j < nb && d.err == nil; j++ {
			v := d.uvarint(math.MaxUint32)
			if j > 0 {
				v += prev + 1
			}
			if v > math.MaxUint32 {
				d.err = errors.New("block number past 2^32")
				break
			}
			r.Blocks = append(r.Blocks, uint32(v))
			prev = v
		}
		if i > 0 && compareRelFork(s.Rels[i-1].RelFork, r.RelFork) >= 0 && d.err == nil {
			d.err = errors.New("relation forks out of order")
		}
		s.Rels = append(s.Rels, r)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes after the end", len(d.b))
	}
	if d.err != nil {
		return fail("%v", d.err)
	}
	if s.PendTotal > 0 && (s.PendInSeg == 0 || s.PendInSeg >= s.PendTotal || s.PendLSN.Segment(s.SegSize) != s.Segment) {
		return fail("pending record at %s of %d bytes, %d in the segment", s.PendLSN, s.PendTotal, s.PendInSeg)
	}
	return s, nil
}

type summaryDecoder struct {
	b   []byte
	err error
}

func (d *summaryDecoder) uvarint(max uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("truncated number")
		return 0
	}
	if v > max {
		d.err = fmt.Errorf("%d is more than %d", v, max)
		return 0
	}
	// One encoding per summary: a number in more bytes than it needs (a
	// trailing zero byte) is refused, as the fuzzer found it decoded.
	if n > 1 && d.b[n-1] == 0 {
		d.err = fmt.Errorf("%d is not in its shortest form", v)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count of items of at least min bytes each.
func (d *summaryDecoder) count(min int) int {
	n := d.uvarint(uint64(len(d.b) / min))
	return int(n)
}

func (d *summaryDecoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errors.New("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *summaryDecoder) bytes(max int) []byte {
	n := d.uvarint(uint64(max))
	if d.err != nil {
		return nil
	}
	if uint64(len(d.b)) < n {
		d.err = errors.New("truncated bytes")
		return nil
	}
	out := bytes.Clone(d.b[:n])
	d.b = d.b[n:]
	return out
}
