// Package filemap is the repository format of what a snapshot contains: a
// tree of directories (one Tree blob per directory) whose files point either
// at whole-file chunks or at a page Map that says, for every page of a
// relation file, which blob holds it.
//
// The map is always materialised: every page points to exactly one place, so a
// restore never walks a chain of backups, and an incremental backup changes
// only the maps (and trees) of what changed; unchanged files and directories
// encode to identical blobs and deduplicate to nothing.
//
// It is a codec and a set of invariants, not the code that builds trees
// (backup) or reads them (restore, verify). Encodings are byte-stable: the
// same value always encodes to the same bytes, which is what makes
// deduplication of unchanged trees work.
package filemap

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

// ID is a blob ID. The zero ID in an Extent means "all-zero pages", which
// are never stored.
type ID = blob.ID

// Limits that decoders enforce, so that a corrupt blob cannot make a reader
// allocate without bound.
const (
	MaxNameLen   = 4096    // bytes in one path element or symlink target
	MaxNodes     = 1 << 22 // entries in one directory
	MaxExtents   = 1 << 24 // extents in one page map
	MaxChunks    = 1 << 24 // content chunks of one file
	MaxBlockSize = 1 << 15 // PostgreSQL's largest BLCKSZ, 32 KiB
)

// NodeType is what a tree entry is.
type NodeType uint8

const (
	TypeDir     NodeType = 1
	TypeFile    NodeType = 2
	TypeSymlink NodeType = 3
)

func (t NodeType) String() string {
	switch t {
	case TypeDir:
		return "dir"
	case TypeFile:
		return "file"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Node is one entry of a directory.
type Node struct {
	Name    string   // one path element, never "", ".", ".." or containing "/"
	Type    NodeType //
	Mode    uint32   // permission bits, setuid/setgid/sticky included (0o7777)
	UID     uint32   // owner as recorded at backup; restore decides whom to give it to
	GID     uint32   //
	Size    int64    // bytes, files only
	ModTime int64    // Unix nanoseconds; with Size and Inode, how backup spots unchanged files
	Inode   uint64   // inode number at backup time (change detection only)

	// Target is a symlink's target.
	Target string
	// Subtree is a directory's Tree blob.
	Subtree ID
	// Content is a file's data as chunks of ChunkSize bytes in order (the
	// last may be shorter); used for files that are not paged relation data.
	Content []ID
	// Map is a relation file's page Map blob; when it is set Content is
	// empty.
	Map ID
}

// ChunkSize is the size of a whole-file content chunk.
const ChunkSize = 1 << 20 // 1 MiB

// Tree is a directory: its entries sorted by name. A directory of more
// than PartMax entries (a database with a million relation files) is held
// in Parts instead: consecutive runs of its entries, each a Tree blob of
// its own holding Nodes, in name order, so that no reader or writer holds
// the whole directory at once and an unchanged run deduplicates. A tree
// has Nodes or Parts, never both.
type Tree struct {
	Nodes []Node
	Parts []TreePart
}

// TreePart is one run of a big directory's entries: a Tree blob with Count
// Nodes, the first called First; every name in it sorts before the next
// part's First.
type TreePart struct {
	First string
	Count uint32
	ID    ID
}

// Parts of big directories. A directory of more than PartMax entries is
// cut into parts after an entry whose name's FNV-1a hash is 0 modulo
// PartTarget, once a part holds PartMin entries, and at PartMax at the
// latest: where a part ends depends on the names around it, not on how
// many came before, so an entry added or removed changes one part and the
// others deduplicate. Readers accept parts cut anywhere.
const (
	PartMin    = 1 << 10
	PartTarget = 1 << 12
	PartMax    = 1 << 14
)

// PartEnds reports whether a part of n entries whose last entry is name
// ends there (see PartMin).
func PartEnds(name string, n int) bool { return PartEndsScaled(name, n, PartMax) }

// PartEndsScaled is PartEnds with every bound scaled to parts of at most
// max entries (tests make small ones).
func PartEndsScaled(name string, n, max int) bool {
	if n >= max {
		return true
	}
	if n < max/(PartMax/PartMin) {
		return false
	}
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return h%uint32(max/(PartMax/PartTarget)) == 0
}

// CheckPart checks a decoded part p of a parted tree against its entry in
// the parent: its entries, their count, its first name, and that all sort
// before the next part's first name (next is "" for the last part).
func CheckPart(ref TreePart, next string, p *Tree) error {
	switch {
	case len(p.Parts) > 0:
		return invalidf("part %s is itself parted", ref.ID)
	case uint32(len(p.Nodes)) != ref.Count:
		return invalidf("part %s has %d entries, its directory says %d", ref.ID, len(p.Nodes), ref.Count)
	case p.Nodes[0].Name != ref.First:
		return invalidf("part %s starts at %q, its directory says %q", ref.ID, p.Nodes[0].Name, ref.First)
	case next != "" && p.Nodes[len(p.Nodes)-1].Name >= next:
		return invalidf("part %s ends at %q, not before the next part's %q", ref.ID, p.Nodes[len(p.Nodes)-1].Name, next)
	}
	return nil
}

// Extent says where pages [Page, Page+Count) of a relation file are: in blob
// Blob starting at its page BlobPage, or, for the zero ID, nowhere because
// they are all zeros.
type Extent struct {
	Page     uint32
	Count    uint32
	Blob     ID
	BlobPage uint32
	// Written is when Blob was first written (Unix seconds), carried forward
	// unchanged while the extent is reused; backup rewrites slots whose base
	// grew old, spreading the cost over time.
	Written int64
	// Base, when set, makes the extent a delta: page k of the extent is
	// Blob's page BlobPage+k XORed with Base's page BasePage+k. A page that
	// changed since Base was stored usually differs from it in a few dozen
	// bytes (an index page gains one tuple, a heap page one xmax), and the
	// XOR compresses to almost nothing where the page itself does not.
	Base     ID
	BasePage uint32
}

// IsDelta reports whether the extent's pages are XORed onto Base's.
func (e *Extent) IsDelta() bool { return !e.Base.IsZero() }

// Map is the page map of one relation file segment.
type Map struct {
	BlockSize uint32   // bytes per page
	Pages     uint32   // file length in pages; the file is Pages*BlockSize bytes
	Extents   []Extent // sorted, contiguous, covering [0, Pages) exactly

	// Sums lets a delta restore recognise a slot-sized window of pages
	// that an existing file already holds without fetching its blobs: the
	// keyed ID the window's bytes would have as one KindSlot blob, for
	// windows that are not simply one slot blob or all zeros (those say
	// so in Extents). A window that has no sum is compared extent by
	// extent. Sorted by Slot, at most one per window.
	Sums []SlotSum
}

// SlotSum is the content ID of window Slot: pages [Slot*n, Slot*n+n) for
// n = blob.SlotSize / BlockSize, the last window cut at Pages.
type SlotSum struct {
	Slot uint32
	ID   ID
}

// SlotPages is the number of pages in one slot-sized window (1 for a map
// whose block size is invalid, so that no caller divides by zero).
func (m *Map) SlotPages() uint32 {
	if m.BlockSize == 0 || m.BlockSize > blob.SlotSize {
		return 1
	}
	return uint32(blob.SlotSize / m.BlockSize)
}

// Windows is the number of slot-sized windows the file spans.
func (m *Map) Windows() uint32 {
	n := m.SlotPages()
	return uint32((uint64(m.Pages) + uint64(n) - 1) / uint64(n))
}

// Sum returns window w's sum, if the map holds one.
func (m *Map) Sum(w uint32) (ID, bool) { return findSum(m.Sums, w) }

// ErrInvalid is matched (errors.Is) by every validation and decoding error.
var ErrInvalid = errors.New("invalid file map")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Validate checks the invariants a restore relies on: every page is covered
// exactly once, in order.
func (m *Map) Validate() error {
	if err := checkBlockSize(m.BlockSize); err != nil {
		return err
	}
	var next uint32
	for i, e := range m.Extents {
		if err := checkExtent(i, &e, next, m.Pages); err != nil {
			return err
		}
		next = e.Page + e.Count
	}
	if next != m.Pages {
		return invalidf("extents cover %d of %d pages", next, m.Pages)
	}
	return checkSums(m.Sums, m.Windows())
}

func checkBlockSize(bs uint32) error {
	if bs == 0 || bs > MaxBlockSize || bs&(bs-1) != 0 {
		return invalidf("block size %d", bs)
	}
	return nil
}

// checkExtent checks extent i of a map of pages pages, which must start at
// page next.
func checkExtent(i int, e *Extent, next, pages uint32) error {
	if e.Count == 0 {
		return invalidf("extent %d is empty", i)
	}
	if e.Page != next {
		return invalidf("extent %d starts at page %d, want %d", i, e.Page, next)
	}
	if uint64(e.Page)+uint64(e.Count) > uint64(pages) {
		return invalidf("extent %d ends at page %d past the file's %d pages", i, uint64(e.Page)+uint64(e.Count), pages)
	}
	if uint64(e.BlobPage)+uint64(e.Count) > 1<<32 {
		return invalidf("extent %d overflows its blob", i)
	}
	if e.Blob.IsZero() && (e.BlobPage != 0 || e.IsDelta()) {
		return invalidf("extent %d of zero pages has a blob page or a base", i)
	}
	if e.IsDelta() && (e.Base == e.Blob || uint64(e.BasePage)+uint64(e.Count) > 1<<32) {
		return invalidf("extent %d has a delta base that is its own blob or overflows", i)
	}
	if !e.IsDelta() && e.BasePage != 0 {
		return invalidf("extent %d has a base page and no base", i)
	}
	return nil
}

// checkSums checks a map's sums against its number of windows.
func checkSums(sums []SlotSum, windows uint32) error {
	for i, s := range sums {
		if s.Slot >= windows {
			return invalidf("sum %d is for window %d of %d", i, s.Slot, windows)
		}
		if i > 0 && sums[i-1].Slot >= s.Slot {
			return invalidf("sums %d and %d are not sorted and unique", i-1, i)
		}
		if s.ID.IsZero() {
			return invalidf("sum %d of window %d is the zero ID", i, s.Slot)
		}
	}
	return nil
}

// Lookup returns the index of the extent holding page p, or -1.
func (m *Map) Lookup(p uint32) int {
	lo, hi := 0, len(m.Extents)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		e := m.Extents[mid]
		switch {
		case p < e.Page:
			hi = mid
		case p >= e.Page+e.Count:
			lo = mid + 1
		default:
			return mid
		}
	}
	return -1
}

func (m *Map) at(i int) Extent { return m.Extents[i] }

// Blobs calls fn for every non-zero blob the map references, the bases of
// deltas included: neighbouring repeats once, others possibly more than once
// (callers that need each blob once keep a set).
func (m *Map) Blobs(fn func(ID)) {
	var last, lastBase ID
	for _, e := range m.Extents {
		if !e.Blob.IsZero() && e.Blob != last {
			last = e.Blob
			fn(e.Blob)
		}
		if e.IsDelta() && e.Base != lastBase && e.Base != last {
			lastBase = e.Base
			fn(e.Base)
		}
	}
}

// HasDeltas reports whether any extent is a delta.
func (m *Map) HasDeltas() bool {
	for i := range m.Extents {
		if m.Extents[i].IsDelta() {
			return true
		}
	}
	return false
}

// Validate checks a directory: names are single path elements, sorted and
// unique, and each entry has exactly the fields of its type; of a parted
// one, that its parts are in order and not empty.
func (t *Tree) Validate() error {
	if len(t.Parts) > 0 {
		if len(t.Nodes) > 0 {
			return invalidf("a tree with both entries and parts")
		}
		for i, p := range t.Parts {
			if err := validName(p.First); err != nil {
				return invalidf("part %d: %v", i, err)
			}
			if i > 0 && t.Parts[i-1].First >= p.First {
				return invalidf("parts starting %q and %q are not sorted", t.Parts[i-1].First, p.First)
			}
			if p.Count == 0 || p.Count > MaxNodes || p.ID.IsZero() {
				return invalidf("part %d: %d entries in blob %s", i, p.Count, p.ID)
			}
		}
		return nil
	}
	for i, n := range t.Nodes {
		if err := validName(n.Name); err != nil {
			return invalidf("entry %d: %v", i, err)
		}
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			return invalidf("entries %q and %q are not sorted and unique", t.Nodes[i-1].Name, n.Name)
		}
		if n.Mode&^0o7777 != 0 {
			return invalidf("%s: mode %o has bits beyond permissions", n.Name, n.Mode)
		}
		switch n.Type {
		case TypeDir:
			if n.Subtree.IsZero() || n.Target != "" || len(n.Content) > 0 || !n.Map.IsZero() {
				return invalidf("%s: directory needs a subtree and nothing else", n.Name)
			}
		case TypeFile:
			if n.Target != "" || !n.Subtree.IsZero() {
				return invalidf("%s: file with a target or subtree", n.Name)
			}
			if !n.Map.IsZero() && len(n.Content) > 0 {
				return invalidf("%s: file with both a page map and content chunks", n.Name)
			}
			if n.Size < 0 {
				return invalidf("%s: negative size", n.Name)
			}
			if n.Map.IsZero() {
				if want := (n.Size + ChunkSize - 1) / ChunkSize; int64(len(n.Content)) != want {
					return invalidf("%s: %d content chunks for %d bytes, want %d", n.Name, len(n.Content), n.Size, want)
				}
			}
		case TypeSymlink:
			if n.Target == "" || len(n.Target) > MaxNameLen || !n.Subtree.IsZero() || len(n.Content) > 0 || !n.Map.IsZero() {
				return invalidf("%s: symlink needs a target and nothing else", n.Name)
			}
		default:
			return invalidf("%s: unknown type %d", n.Name, n.Type)
		}
	}
	return nil
}

func validName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("name %q", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name of %d bytes", len(name))
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("name %q contains / or NUL", name)
	}
	return nil
}

// Find returns the entry called name, or nil.
func (t *Tree) Find(name string) *Node {
	lo, hi := 0, len(t.Nodes)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if t.Nodes[mid].Name < name {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(t.Nodes) && t.Nodes[lo].Name == name {
		return &t.Nodes[lo]
	}
	return nil
}
