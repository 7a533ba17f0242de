// Package index maps blob IDs to where they are stored (pack, offset,
// lengths, kind) compactly in memory, and encodes that mapping for storage as
// index files (deltas written by each writer, and the parts of compacted
// generations).
//
// In memory an Index is a sorted array of fixed-size entries (EntryMemSize
// bytes each) plus a small overlay of recent additions, and a table of packs
// that entries refer to by number: no map of per-entry heap objects.
//
// This package does no I/O and no encryption: repo seals index files
// (age(zstd(...))) and decides which ones to load.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"unsafe"

	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/pack"
)

// Pack describes one pack object: enough to read any blob in it with one
// ranged GET and no header round trip.
type Pack struct {
	ID    pack.ID
	Class blob.Class
	// PayloadKey is the age STREAM payload key of the pack
	// (HKDF-SHA256(file key, nonce, "payload")). Index files are encrypted to
	// the same recipients as packs, so this reveals nothing a reader of the
	// index could not unwrap from the pack header itself; it saves a GET and
	// an ML-KEM decapsulation per pack on read.
	PayloadKey    [agestream.KeySize]byte
	PayloadOffset uint32 // bytes of age header and nonce before the payload
	PlainSize     uint32 // bytes of pack plaintext (blobs, trailer, footer)
}

// CipherSize returns the size of the pack object in bytes.
func (p *Pack) CipherSize() int64 {
	return int64(p.PayloadOffset) + agestream.CiphertextSize(int64(p.PlainSize))
}

// Key returns the pack's object key.
func (p *Pack) Key() string { return pack.Key(p.Class, p.ID) }

// Entry is where one blob is stored. Pack numbers a Pack in the enclosing
// Index or File.
type Entry struct {
	ID          blob.ID
	Pack        uint32
	Offset      uint32 // in the pack plaintext
	Length      uint32 // stored bytes
	RawLength   uint32 // plaintext bytes
	Kind        blob.Kind
	Compression blob.Compression
}

// EntryMemSize is the in-memory size of one Entry in bytes.
const EntryMemSize = int(unsafe.Sizeof(Entry{}))

// Location is a resolved lookup: the blob's entry and its pack.
type Location struct {
	Entry
	Pack Pack
}

// mergeAt is the overlay size (entries) at which recent additions are merged
// into the sorted array: large enough that merges are rare, small enough that
// the overlay map (about 100 bytes an entry) stays a few MiB.
const mergeAt = 1 << 15

// Index is an in-memory blob index. It is safe for concurrent use.
type Index struct {
	mu      sync.RWMutex
	packs   []Pack
	packNum map[pack.ID]uint32
	sorted  []Entry           // by ID, unique
	recent  map[blob.ID]Entry // not yet merged
	// A spilling index (spill.go) moves sorted to runs in spillDir.
	spillDir string
	spillAt  int
	runs     []*run
}

// New returns an empty index.
func New() *Index {
	return &Index{packNum: make(map[pack.ID]uint32), recent: make(map[blob.ID]Entry)}
}

func (x *Index) addPackLocked(p Pack) uint32 {
	if n, ok := x.packNum[p.ID]; ok {
		return n
	}
	n := uint32(len(x.packs))
	x.packs = append(x.packs, p)
	x.packNum[p.ID] = n
	return n
}

func (x *Index) findLocked(id blob.ID) (Entry, bool) {
	if e, ok := x.recent[id]; ok {
		return e, true
	}
	if e, ok := x.findSortedLocked(&id); ok {
		return e, true
	}
	if len(x.runs) > 0 {
		return x.findRunsLocked(&id)
	}
	return Entry{}, false
}

func compareID(a, b *blob.ID) int {
	for i := 0; i < len(a); i += 8 {
		x, y := binary.BigEndian.Uint64(a[i:]), binary.BigEndian.Uint64(b[i:])
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// Has reports whether the blob is indexed.
func (x *Index) Has(id blob.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.findLocked(id)
	return ok
}

// Lookup returns where the blob is stored.
func (x *Index) Lookup(id blob.ID) (Location, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e, ok := x.findLocked(id)
	if !ok {
		return Location{}, false
	}
	return Location{Entry: e, Pack: x.packs[e.Pack]}, true
}

// Len returns the number of blobs indexed.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := len(x.sorted) + len(x.recent)
	for _, r := range x.runs {
		n += r.n
	}
	return n
}

// PackCount returns the number of packs indexed.
func (x *Index) PackCount() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.packs)
}

// HasPack reports whether a pack is indexed.
func (x *Index) HasPack(id pack.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.packNum[id]
	return ok
}

// MemBytes estimates the memory held by the index in bytes (arrays at their
// capacity; maps at about 100 bytes an element).
func (x *Index) MemBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	const mapElem = 100
	n := int64(cap(x.sorted))*int64(EntryMemSize) +
		int64(cap(x.packs))*int64(unsafe.Sizeof(Pack{})) +
		int64(len(x.packNum)+len(x.recent))*mapElem
	for _, r := range x.runs {
		n += int64(len(r.fences))*int64(len(blob.ID{})) + int64(len(r.bloom))*8
	}
	return n
}

// EntryBytes is the bytes of entries the index holds in memory (the sorted
// array at its capacity and the overlay, EntryMemSize each): what the
// memory of a spilling index bounds. Entries in runs are not counted.
func (x *Index) EntryBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return int64(cap(x.sorted)+len(x.recent)) * int64(EntryMemSize)
}

// AddPack adds the blobs of one pack (for example after it was uploaded).
// Blobs already indexed keep their first location.
func (x *Index) AddPack(p Pack, entries []pack.Entry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.addPackLocked(p)
	for _, pe := range entries {
		if _, ok := x.findLocked(pe.ID); ok {
			continue
		}
		x.recent[pe.ID] = Entry{ID: pe.ID, Pack: n, Offset: pe.Offset, Length: pe.Length,
			RawLength: pe.RawLength, Kind: pe.Kind, Compression: pe.Compression}
		// Within the loop: a pack of many small blobs would otherwise
		// grow the overlay by all of them first.
		if len(x.recent) >= x.overlayMax() {
			x.mergeLocked(nil)
		}
	}
}

// AddFile adds the contents of a decoded index file.
func (x *Index) AddFile(f *File) {
	x.mu.Lock()
	defer x.mu.Unlock()
	nums := make([]uint32, len(f.Packs))
	for i, p := range f.Packs {
		nums[i] = x.addPackLocked(p)
	}
	add := make([]Entry, len(f.Blobs))
	for i, e := range f.Blobs {
		e.Pack = nums[e.Pack]
		add[i] = e
	}
	x.mergeLocked(add)
}

// mergeLocked merges the overlay and add (any order) into the sorted array,
// keeping the first location of a duplicate ID (existing entries first).
//
// The merge is done in place, from the back, in the sorted array's spare
// capacity: a merge never holds the old and the new array at once, which
// at a spilling index's bound would double its memory. A spilling index
// grows the array up to its bound and no further; when the merged entries
// would not fit under it, they go straight to a run (mergeToRunLocked).
func (x *Index) mergeLocked(add []Entry) {
	if len(x.recent) > 0 {
		add = slices.Grow(add, len(x.recent))
		for _, e := range x.recent {
			add = append(add, e)
		}
		// A new map rather than clear: clear keeps the buckets of the
		// largest overlay the map ever held.
		x.recent = make(map[blob.ID]Entry)
	}
	if len(add) == 0 {
		return
	}
	if len(x.runs) > 0 {
		// What the runs hold keeps its first location.
		add = slices.DeleteFunc(add, func(e Entry) bool {
			_, ok := x.findRunsLocked(&e.ID)
			return ok
		})
	}
	slices.SortStableFunc(add, func(a, b Entry) int { return compareID(&a.ID, &b.ID) })
	add = slices.CompactFunc(add, func(a, b Entry) bool { return a.ID == b.ID })
	// What the array holds keeps its first location too.
	add = slices.DeleteFunc(add, func(e Entry) bool {
		_, ok := x.findSortedLocked(&e.ID)
		return ok
	})
	if len(add) == 0 {
		return
	}
	need := len(x.sorted) + len(add)
	if x.spillDir != "" && need >= x.spillAt {
		if x.mergeToRunLocked(add) {
			return
		}
	}
	if need > cap(x.sorted) {
		// Grow by half (not double) so that a big in-memory index does
		// not briefly hold twice itself; a spilling one never past its
		// bound.
		c := max(need, cap(x.sorted)+cap(x.sorted)/2, 1024)
		if x.spillDir != "" {
			c = max(min(c, x.spillAt), need)
		}
		grown := make([]Entry, len(x.sorted), c)
		copy(grown, x.sorted)
		x.sorted = grown
	}
	// Backward merge into the spare capacity: the write position never
	// overtakes the unread part of the old entries.
	i, j := len(x.sorted)-1, len(add)-1
	x.sorted = x.sorted[:need]
	for k := need - 1; j >= 0; k-- {
		if i >= 0 && compareID(&x.sorted[i].ID, &add[j].ID) > 0 {
			x.sorted[k] = x.sorted[i]
			i--
		} else {
			x.sorted[k] = add[j]
			j--
		}
	}
}

// findSortedLocked looks id up in the sorted array.
func (x *Index) findSortedLocked(id *blob.ID) (Entry, bool) {
	i, ok := slices.BinarySearchFunc(x.sorted, *id, func(e Entry, id blob.ID) int {
		return compareID(&e.ID, &id)
	})
	if ok {
		return x.sorted[i], true
	}
	return Entry{}, false
}

// mergeToRunLocked writes the sorted array and add (sorted, unique, none
// in the array or the runs) merged as a new run, empties the array (its
// capacity stays for the next entries) and merges runs as spillLocked
// does. False, with nothing changed, when the run cannot be written.
func (x *Index) mergeToRunLocked(add []Entry) bool {
	i, j := 0, 0
	sorted := x.sorted
	next := func() (Entry, bool, error) {
		switch {
		case i < len(sorted) && (j == len(add) || compareID(&sorted[i].ID, &add[j].ID) < 0):
			i++
			return sorted[i-1], true, nil
		case j < len(add):
			j++
			return add[j-1], true, nil
		}
		return Entry{}, false, nil
	}
	r, err := writeRun(x.spillDir, len(sorted)+len(add), next)
	if err != nil {
		x.spillDir = ""
		return false
	}
	x.runs = append(x.runs, r)
	x.sorted = x.sorted[:0]
	x.mergeRunsLocked()
	return true
}

// overlayMax is the overlay size at which it is merged: mergeAt, or for a
// spilling index an eighth of its bound if that is less, so that the
// overlay (about 100 bytes an entry) stays within a small multiple of
// what the bound lets the sorted array hold.
func (x *Index) overlayMax() int {
	if x.spillDir != "" {
		return max(min(mergeAt, x.spillAt/8), 128)
	}
	return mergeAt
}

// Files returns the whole index as files of at most maxBlobs blobs each, in
// ID order, each with the packs its blobs use (for compaction).
func (x *Index) Files(maxBlobs int) ([]*File, error) {
	x.mu.Lock()
	x.mergeLocked(nil)
	x.mu.Unlock()
	x.mu.RLock()
	defer x.mu.RUnlock()
	var files []*File
	var f *File
	var local map[uint32]uint32
	err := x.eachSortedLocked(func(e Entry) bool {
		if f == nil || len(f.Blobs) >= maxBlobs {
			f, local = &File{}, make(map[uint32]uint32)
			files = append(files, f)
		}
		n, ok := local[e.Pack]
		if !ok {
			n = uint32(len(f.Packs))
			local[e.Pack] = n
			f.Packs = append(f.Packs, x.packs[e.Pack])
		}
		e.Pack = n
		f.Blobs = append(f.Blobs, e)
		return true
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}

// eachSortedLocked calls fn for every entry in ID order (the sorted array
// and the runs merged; the overlay must be empty), until fn returns false.
func (x *Index) eachSortedLocked(fn func(e Entry) bool) error {
	srcs := make([]func() (Entry, bool, error), 0, len(x.runs)+1)
	for _, r := range x.runs {
		srcs = append(srcs, r.reader().next)
	}
	i := 0
	srcs = append(srcs, func() (Entry, bool, error) {
		if i == len(x.sorted) {
			return Entry{}, false, nil
		}
		i++
		return x.sorted[i-1], true, nil
	})
	next, err := mergeSources(srcs...)
	if err != nil {
		return err
	}
	for {
		e, ok, err := next()
		if err != nil || !ok {
			return err
		}
		if !fn(e) {
			return nil
		}
	}
}

// Each calls fn for every indexed blob with its pack, in no particular
// order, until fn returns false. fn must not call back into the index.
func (x *Index) Each(fn func(e Entry, p *Pack) bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, e := range x.sorted {
		if !fn(e, &x.packs[e.Pack]) {
			return
		}
	}
	for _, e := range x.recent {
		if !fn(e, &x.packs[e.Pack]) {
			return
		}
	}
	for _, r := range x.runs {
		stop := false
		r.each(func(e Entry) bool {
			stop = !fn(e, &x.packs[e.Pack])
			return !stop
		})
		if stop {
			return
		}
	}
}

// File is the content of one stored index file: a pack table and blob
// entries whose Pack field numbers a pack of this file.
type File struct {
	Packs []Pack
	Blobs []Entry
}

// Format constants of index files. They are part of the on-storage format.
const (
	Version        = 1
	Magic          = "TMIX"
	HeaderSize     = 4 + 2 + 2 + 4 + 4                                            // magic, version, reserved, pack count, blob count
	PackRecordSize = 32 + 1 + 3 + 4 + 4 + agestream.KeySize                       // see packRecordLayout
	BlobRecordSize = blob.IDSize + 4 + 4 + 4 + 4 + 1 + 1 + 2                      // see blobRecordLayout
	maxPayloadOff  = agestream.MaxHeaderPrefix                                    // bytes of age header + nonce
	MaxFileSize    = HeaderSize + (1<<24)*PackRecordSize + (1<<26)*BlobRecordSize // decoder bound
)

// packRecordLayout documents one pack record; it is never used as such.
type packRecordLayout struct {
	ID            [32]byte // pack.ID: BLAKE3-256 of the pack ciphertext
	Class         uint8    // blob.Class: 0 data, 1 meta
	Reserved      [3]byte  // zero
	PayloadOffset uint32   // bytes of age header + nonce
	PlainSize     uint32   // bytes of pack plaintext
	PayloadKey    [32]byte // age STREAM payload key
}

// blobRecordLayout documents one blob record; it is never used as such.
type blobRecordLayout struct {
	ID          [32]byte // blob.ID
	Pack        uint32   // number of a pack record in this file
	Offset      uint32   // in the pack plaintext
	Length      uint32   // stored bytes
	RawLength   uint32   // plaintext bytes
	Kind        uint8    // blob.Kind
	Compression uint8    // blob.Compression
	Reserved    uint16   // zero
}

var _, _ = packRecordLayout{}, blobRecordLayout{}

// Encode returns the binary form of f:
//
//	header  = "TMIX" || version u16 || reserved u16 || pack count u32 || blob count u32
//	packs   = pack count records of PackRecordSize bytes
//	blobs   = blob count records of BlobRecordSize bytes
func (f *File) Encode() []byte {
	b := make([]byte, 0, HeaderSize+len(f.Packs)*PackRecordSize+len(f.Blobs)*BlobRecordSize)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(f.Packs)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(f.Blobs)))
	for _, p := range f.Packs {
		b = append(b, p.ID[:]...)
		b = append(b, byte(p.Class), 0, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, p.PayloadOffset)
		b = binary.LittleEndian.AppendUint32(b, p.PlainSize)
		b = append(b, p.PayloadKey[:]...)
	}
	for _, e := range f.Blobs {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, e.Pack)
		b = binary.LittleEndian.AppendUint32(b, e.Offset)
		b = binary.LittleEndian.AppendUint32(b, e.Length)
		b = binary.LittleEndian.AppendUint32(b, e.RawLength)
		b = append(b, byte(e.Kind), byte(e.Compression), 0, 0)
	}
	return b
}

// ErrFormat is matched by every decoding failure.
var ErrFormat = errors.New("malformed index file")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// Decode parses an index file and checks every record: pack numbers in
// range, blobs inside their pack's blob area, kinds matching the pack class,
// sizes within the pack format's limits.
func Decode(b []byte) (*File, error) {
	if len(b) < HeaderSize {
		return nil, formatErr("%d bytes, shorter than the header", len(b))
	}
	if string(b[:4]) != Magic {
		return nil, formatErr("magic %q, want %q", b[:4], Magic)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return nil, formatErr("version %d, this tidemark reads %d", v, Version)
	}
	np := int64(binary.LittleEndian.Uint32(b[8:]))
	nb := int64(binary.LittleEndian.Uint32(b[12:]))
	if want := HeaderSize + np*PackRecordSize + nb*BlobRecordSize; int64(len(b)) != want {
		return nil, formatErr("%d bytes for %d packs and %d blobs, want %d", len(b), np, nb, want)
	}
	f := &File{Packs: make([]Pack, np), Blobs: make([]Entry, nb)}
	r := b[HeaderSize:]
	for i := range f.Packs {
		p := &f.Packs[i]
		copy(p.ID[:], r[:32])
		p.Class = blob.Class(r[32])
		p.PayloadOffset = binary.LittleEndian.Uint32(r[36:])
		p.PlainSize = binary.LittleEndian.Uint32(r[40:])
		copy(p.PayloadKey[:], r[44:76])
		r = r[PackRecordSize:]
		switch {
		case p.Class != blob.ClassData && p.Class != blob.ClassMeta:
			return nil, formatErr("pack %d: class %d", i, p.Class)
		case p.PayloadOffset < agestream.NonceSize || p.PayloadOffset > maxPayloadOff:
			return nil, formatErr("pack %d: payload offset %d", i, p.PayloadOffset)
		case p.PlainSize < pack.FooterSize || p.PlainSize > pack.MaxSize:
			return nil, formatErr("pack %d: plaintext size %d", i, p.PlainSize)
		}
	}
	for i := range f.Blobs {
		e := &f.Blobs[i]
		copy(e.ID[:], r[:32])
		e.Pack = binary.LittleEndian.Uint32(r[32:])
		e.Offset = binary.LittleEndian.Uint32(r[36:])
		e.Length = binary.LittleEndian.Uint32(r[40:])
		e.RawLength = binary.LittleEndian.Uint32(r[44:])
		e.Kind = blob.Kind(r[48])
		e.Compression = blob.Compression(r[49])
		r = r[BlobRecordSize:]
		if int64(e.Pack) >= np {
			return nil, formatErr("blob %d: pack %d of %d", i, e.Pack, np)
		}
		p := &f.Packs[e.Pack]
		switch {
		case e.Kind == 0 || e.Kind.Class() != p.Class:
			return nil, formatErr("blob %d: kind %s in a %s pack", i, e.Kind, p.Class.Prefix())
		case !e.Compression.Valid():
			return nil, formatErr("blob %d: compression %d", i, e.Compression)
		case e.Length > pack.MaxBlobSize || e.RawLength > pack.MaxBlobSize:
			return nil, formatErr("blob %d: length %d/%d", i, e.Length, e.RawLength)
		case e.Compression == blob.Raw && e.Length != e.RawLength:
			return nil, formatErr("blob %d: raw blob of %d bytes claims %d", i, e.Length, e.RawLength)
		case int64(e.Offset)+int64(e.Length) > int64(p.PlainSize)-pack.FooterSize:
			return nil, formatErr("blob %d: %d+%d past pack of %d bytes", i, e.Offset, e.Length, p.PlainSize)
		}
	}
	return f, nil
}
