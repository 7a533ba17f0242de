package index

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

// An index of millions of blobs (a repository of a cluster with millions of
// files) would hold tens of bytes per blob in memory. A spilling index
// (NewSpilling) keeps fewer than a set number of entries in its sorted array; the rest
// live in runs: sorted files of fixed-size records in a temporary
// directory, unlinked at creation (the system removes them when the
// process ends), with in memory only the first ID of each block of
// runBlock records and a Bloom filter, about 1.8 bytes a blob. A lookup
// checks the filters and reads one block of each run that may hold the ID
// (pread, from the page cache, which is not the process's memory). Runs
// are merged so that each is at most half the size of the one before: a
// few runs, and each entry rewritten a few times.

// DefaultMemory is the bytes of entries a spilling index keeps in memory
// unless told otherwise: 256k entries, 13 MiB.
const DefaultMemory = int64(1<<18) * int64(EntryMemSize)

const (
	// runBlock is the records of a run read by one lookup (3.3 KiB).
	runBlock = 64
	// recSize is the size of a record in a run: ID, pack, offset, length,
	// raw length, kind, compression, two bytes of padding.
	recSize = 52
	// bloomBits is the Bloom filter's bits per entry (false positives:
	// about 1%).
	bloomBits   = 10
	bloomHashes = 7
)

// NewSpilling returns an empty index that keeps at most memory bytes of
// entries in its sorted array (DefaultMemory when memory <= 0; at least
// 1,024 entries) and the rest in runs in dir. If a run cannot be written
// there, the index keeps its entries in memory instead.
func NewSpilling(dir string, memory int64) *Index {
	if memory <= 0 {
		memory = DefaultMemory
	}
	x := New()
	x.spillDir, x.spillAt = dir, int(max(memory/int64(EntryMemSize), 1024))
	return x
}

// run is one sorted file of entries.
type run struct {
	f      *os.File
	n      int
	fences []blob.ID // the first ID of each block
	bloom  []uint64
}

var blockPool = sync.Pool{New: func() any { b := make([]byte, runBlock*recSize); return &b }}

func putRec(b []byte, e *Entry) {
	le := binary.LittleEndian
	copy(b, e.ID[:])
	le.PutUint32(b[32:], e.Pack)
	le.PutUint32(b[36:], e.Offset)
	le.PutUint32(b[40:], e.Length)
	le.PutUint32(b[44:], e.RawLength)
	b[48], b[49], b[50], b[51] = byte(e.Kind), byte(e.Compression), 0, 0
}

func getRec(b []byte) Entry {
	le := binary.LittleEndian
	var e Entry
	copy(e.ID[:], b)
	e.Pack, e.Offset, e.Length, e.RawLength = le.Uint32(b[32:]), le.Uint32(b[36:]), le.Uint32(b[40:]), le.Uint32(b[44:])
	e.Kind, e.Compression = blob.Kind(b[48]), blob.Compression(b[49])
	return e
}

func bloomPos(id *blob.ID, i int, m uint64) uint64 {
	// IDs are keyed hashes: their bytes are as good as any hash of them.
	h1 := binary.LittleEndian.Uint64(id[0:])
	h2 := binary.LittleEndian.Uint64(id[8:]) | 1
	return (h1 + uint64(i)*h2) % m
}

func (r *run) mayHave(id *blob.ID) bool {
	m := uint64(len(r.bloom)) * 64
	for i := range bloomHashes {
		p := bloomPos(id, i, m)
		if r.bloom[p/64]&(1<<(p%64)) == 0 {
			return false
		}
	}
	return true
}

// find looks id up in the run.
func (r *run) find(id *blob.ID) (Entry, bool, error) {
	if r.n == 0 || !r.mayHave(id) {
		return Entry{}, false, nil
	}
	// The last block whose first ID is not after id.
	lo, hi := 0, len(r.fences)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if compareID(&r.fences[mid], id) <= 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 {
		return Entry{}, false, nil
	}
	blk := lo - 1
	n := min(runBlock, r.n-blk*runBlock)
	bp := blockPool.Get().(*[]byte)
	defer blockPool.Put(bp)
	b := (*bp)[:n*recSize]
	if _, err := r.f.ReadAt(b, int64(blk)*runBlock*recSize); err != nil {
		return Entry{}, false, fmt.Errorf("read index run: %w", err)
	}
	lo, hi = 0, n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		c := compareID((*blob.ID)(b[mid*recSize:]), id)
		switch {
		case c == 0:
			return getRec(b[mid*recSize:]), true, nil
		case c < 0:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return Entry{}, false, nil
}

// each reads the run in order.
func (r *run) each(fn func(e Entry) bool) error {
	br := bufio.NewReaderSize(io.NewSectionReader(r.f, 0, int64(r.n)*recSize), 1<<20)
	var b [recSize]byte
	for range r.n {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return fmt.Errorf("read index run: %w", err)
		}
		if !fn(getRec(b[:])) {
			return nil
		}
	}
	return nil
}

// writeRun writes n entries, sorted and unique, that next yields as a run
// in dir.
func writeRun(dir string, n int, next func() (Entry, bool, error)) (*run, error) {
	f, err := os.CreateTemp(dir, "tidemark-index-*")
	if err != nil {
		return nil, err
	}
	// Unlinked at once: the system removes it with the last descriptor.
	os.Remove(f.Name())
	r := &run{f: f, bloom: make([]uint64, (uint64(n)*bloomBits+63)/64+1)}
	runtime.AddCleanup(r, func(f *os.File) { f.Close() }, f)
	bw := bufio.NewWriterSize(f, 1<<20)
	var b [recSize]byte
	m := uint64(len(r.bloom)) * 64
	for {
		e, ok, err := next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		if r.n%runBlock == 0 {
			r.fences = append(r.fences, e.ID)
		}
		for i := range bloomHashes {
			p := bloomPos(&e.ID, i, m)
			r.bloom[p/64] |= 1 << (p % 64)
		}
		putRec(b[:], &e)
		if _, err := bw.Write(b[:]); err != nil {
			return nil, err
		}
		r.n++
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return r, nil
}

// runReader yields a run's entries in order.
type runReader struct {
	br   *bufio.Reader
	left int
	buf  [recSize]byte
}

func (r *run) reader() *runReader {
	return &runReader{br: bufio.NewReaderSize(io.NewSectionReader(r.f, 0, int64(r.n)*recSize), 1<<20), left: r.n}
}

func (rr *runReader) next() (Entry, bool, error) {
	if rr.left == 0 {
		return Entry{}, false, nil
	}
	if _, err := io.ReadFull(rr.br, rr.buf[:]); err != nil {
		return Entry{}, false, fmt.Errorf("read index run: %w", err)
	}
	rr.left--
	return getRec(rr.buf[:]), true, nil
}

// peeker wraps a source of sorted entries with one entry of look-ahead.
type peeker struct {
	next func() (Entry, bool, error)
	cur  Entry
	ok   bool
}

func (p *peeker) advance() error {
	var err error
	p.cur, p.ok, err = p.next()
	return err
}

// mergeSources merges sorted sources into one sorted, unique sequence;
// of an ID in several, the earliest source's entry is kept (older runs
// first: the first location stays).
func mergeSources(srcs ...func() (Entry, bool, error)) (func() (Entry, bool, error), error) {
	ps := make([]*peeker, len(srcs))
	for i, s := range srcs {
		ps[i] = &peeker{next: s}
		if err := ps[i].advance(); err != nil {
			return nil, err
		}
	}
	return func() (Entry, bool, error) {
		best := -1
		for i, p := range ps {
			if p.ok && (best < 0 || compareID(&p.cur.ID, &ps[best].cur.ID) < 0) {
				best = i
			}
		}
		if best < 0 {
			return Entry{}, false, nil
		}
		e := ps[best].cur
		for _, p := range ps {
			for p.ok && p.cur.ID == e.ID {
				if err := p.advance(); err != nil {
					return Entry{}, false, err
				}
			}
		}
		return e, true, nil
	}, nil
}

// mergeRunsLocked merges the newest runs so that each is at most half the
// one before. A merge that fails leaves the two runs as they are.
func (x *Index) mergeRunsLocked() {
	for len(x.runs) >= 2 {
		a, b := x.runs[len(x.runs)-2], x.runs[len(x.runs)-1]
		if 2*b.n < a.n {
			break
		}
		next, err := mergeSources(a.reader().next, b.reader().next)
		var m *run
		if err == nil {
			m, err = writeRun(x.spillDir, a.n+b.n, next)
		}
		if err != nil {
			return
		}
		x.runs = append(x.runs[:len(x.runs)-2], m)
	}
}

// findRunsLocked looks id up in the runs, newest first. A run that cannot
// be read (its temporary file damaged) finds nothing: a writer then stores
// the blob again, a reader reports it missing; neither uses wrong bytes.
func (x *Index) findRunsLocked(id *blob.ID) (Entry, bool) {
	for i := len(x.runs) - 1; i >= 0; i-- {
		if e, ok, err := x.runs[i].find(id); err == nil && ok {
			return e, true
		}
	}
	return Entry{}, false
}
