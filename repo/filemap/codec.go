package filemap

import (
	"encoding/binary"
)

// Encodings. Both start with a four-byte magic whose last byte is the
// version, so a reader can refuse what it does not know.
//
//	tree := "TMT1" uvarint(count) node*
//	     | "TMT2" uvarint(count) part*                  (a parted directory)
//	part := uvarint(len) first  uvarint(entries) tree[32]
//	node := uvarint(len) name  byte(type)  uvarint(mode) uvarint(uid) uvarint(gid)
//	        uvarint(size) varint(mtime) uvarint(inode)  body
//	body := dir:     subtree[32]
//	        symlink: uvarint(len) target
//	        file:    byte(0) uvarint(n) chunk[32]*n   (content chunks)
//	               | byte(1) map[32]                  (page map)
//
//	map    := "TMM1" extents
//	        | "TMM2" extents uvarint(n) sum*n          (n > 0)
//	        | "TMM3" dextents uvarint(n) sum*n         (n >= 0; some extent is a delta)
//	extents := uvarint(blocksize) uvarint(pages) uvarint(count) extent*
//	extent := uvarint(count) blob[32] uvarint(blobpage) varint(written)
//	dextents := uvarint(blocksize) uvarint(pages) uvarint(count) dextent*
//	dextent := extent byte(0)
//	         | extent byte(1) base[32] uvarint(basepage)
//	sum    := uvarint(window - previous window - 1) id[32]   (previous: -1 for the first)
//
// An extent's first page is not stored: extents are contiguous from page 0.
// Each map has the oldest encoding that can hold it: one without deltas or
// sums is written as TMM1, one without deltas as TMM2, so maps encode as
// they always did and deduplicate against maps written before sums and
// deltas existed.
var (
	treeMagic   = [4]byte{'T', 'M', 'T', '1'}
	partedMagic = [4]byte{'T', 'M', 'T', '2'}
	mapMagic    = [4]byte{'T', 'M', 'M', '1'}
	sumsMagic   = [4]byte{'T', 'M', 'M', '2'}
	deltasMagic = [4]byte{'T', 'M', 'M', '3'}
)

const (
	fileContent byte = 0
	fileMap     byte = 1
)

// EncodeTree returns the canonical encoding of a valid tree.
func EncodeTree(t *Tree) ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if len(t.Parts) > 0 {
		b := append([]byte(nil), partedMagic[:]...)
		b = binary.AppendUvarint(b, uint64(len(t.Parts)))
		for _, p := range t.Parts {
			b = appendString(b, p.First)
			b = binary.AppendUvarint(b, uint64(p.Count))
			b = append(b, p.ID[:]...)
		}
		return b, nil
	}
	b := append([]byte(nil), treeMagic[:]...)
	b = binary.AppendUvarint(b, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		b = appendString(b, n.Name)
		b = append(b, byte(n.Type))
		b = binary.AppendUvarint(b, uint64(n.Mode))
		b = binary.AppendUvarint(b, uint64(n.UID))
		b = binary.AppendUvarint(b, uint64(n.GID))
		b = binary.AppendUvarint(b, uint64(n.Size))
		b = binary.AppendVarint(b, n.ModTime)
		b = binary.AppendUvarint(b, n.Inode)
		switch n.Type {
		case TypeDir:
			b = append(b, n.Subtree[:]...)
		case TypeSymlink:
			b = appendString(b, n.Target)
		case TypeFile:
			if !n.Map.IsZero() {
				b = append(b, fileMap)
				b = append(b, n.Map[:]...)
			} else {
				b = append(b, fileContent)
				b = binary.AppendUvarint(b, uint64(len(n.Content)))
				for _, c := range n.Content {
					b = append(b, c[:]...)
				}
			}
		}
	}
	return b, nil
}

// decodeParted decodes the rest of a parted tree.
func decodeParted(d *decoder) (*Tree, error) {
	count := d.uvarint(MaxNodes, "part count")
	t := &Tree{}
	if d.err == nil && count > uint64(len(d.b))/34+1 {
		d.fail("part count %d in %d bytes", count, len(d.b))
	}
	for i := uint64(0); i < count && d.err == nil; i++ {
		var p TreePart
		p.First = d.str("first name")
		p.Count = uint32(d.uvarint(MaxNodes, "part entries"))
		p.ID = d.id()
		t.Parts = append(t.Parts, p)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	if len(t.Parts) == 0 {
		return nil, invalidf("a parted tree without parts")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// DecodeTree decodes and validates a tree.
func DecodeTree(data []byte) (*Tree, error) {
	d := decoder{b: data}
	if d.magic(treeMagic, partedMagic) == 1 {
		return decodeParted(&d)
	}
	count := d.uvarint(MaxNodes, "node count")
	t := &Tree{}
	if d.err == nil {
		// Each node needs at least 8 bytes; refuse counts the data cannot hold
		// before allocating for them.
		if count > uint64(len(d.b))/8+1 {
			d.fail("node count %d in %d bytes", count, len(d.b))
		} else {
			t.Nodes = make([]Node, 0, count)
		}
	}
	for i := uint64(0); i < count && d.err == nil; i++ {
		var n Node
		n.Name = d.str("name")
		n.Type = NodeType(d.byte())
		n.Mode = uint32(d.uvarint(0o7777, "mode"))
		n.UID = uint32(d.uvarint(1<<32-1, "uid"))
		n.GID = uint32(d.uvarint(1<<32-1, "gid"))
		n.Size = int64(d.uvarint(1<<62, "size"))
		n.ModTime = d.varint()
		n.Inode = d.uvarint(1<<64-1, "inode")
		switch n.Type {
		case TypeDir:
			n.Subtree = d.id()
		case TypeSymlink:
			n.Target = d.str("target")
		case TypeFile:
			switch form := d.byte(); form {
			case fileMap:
				n.Map = d.id()
			case fileContent:
				c := d.uvarint(MaxChunks, "chunk count")
				if c > uint64(len(d.b))/32 {
					d.fail("%d chunks in %d bytes", c, len(d.b))
					break
				}
				if c > 0 {
					n.Content = make([]ID, c)
				}
				for j := range n.Content {
					n.Content[j] = d.id()
				}
			default:
				d.fail("file form %d", form)
			}
		default:
			d.fail("node type %d", n.Type)
		}
		t.Nodes = append(t.Nodes, n)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// EncodeMap returns the canonical encoding of a valid page map.
func EncodeMap(m *Map) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 16+len(m.Extents)*44+len(m.Sums)*34)
	deltas := m.HasDeltas()
	b = appendMapHeader(b, m, len(m.Extents), deltas)
	for i := range m.Extents {
		b = appendExtent(b, &m.Extents[i], deltas)
	}
	return appendSums(b, m.Sums, deltas), nil
}

// appendMapHeader appends the magic, block size, pages and extent count of
// m: the oldest encoding that can hold it.
func appendMapHeader(b []byte, m *Map, extents int, deltas bool) []byte {
	switch {
	case deltas:
		b = append(b, deltasMagic[:]...)
	case len(m.Sums) > 0:
		b = append(b, sumsMagic[:]...)
	default:
		b = append(b, mapMagic[:]...)
	}
	b = binary.AppendUvarint(b, uint64(m.BlockSize))
	b = binary.AppendUvarint(b, uint64(m.Pages))
	return binary.AppendUvarint(b, uint64(extents))
}

func appendExtent(b []byte, e *Extent, deltas bool) []byte {
	b = binary.AppendUvarint(b, uint64(e.Count))
	b = append(b, e.Blob[:]...)
	b = binary.AppendUvarint(b, uint64(e.BlobPage))
	b = binary.AppendVarint(b, e.Written)
	if deltas {
		if e.IsDelta() {
			b = append(b, 1)
			b = append(b, e.Base[:]...)
			b = binary.AppendUvarint(b, uint64(e.BasePage))
		} else {
			b = append(b, 0)
		}
	}
	return b
}

// extentLen is the length of appendExtent's encoding of e in a map
// without deltas (a map with deltas adds a byte to each, and the base to
// the deltas).
func extentLen(e *Extent) int {
	return uvarintLen(uint64(e.Count)) + 32 + uvarintLen(uint64(e.BlobPage)) + varintLen(e.Written)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

func appendSums(b []byte, sums []SlotSum, deltas bool) []byte {
	if !deltas && len(sums) == 0 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(sums)))
	next := uint32(0)
	for _, s := range sums {
		b = binary.AppendUvarint(b, uint64(s.Slot-next))
		b = append(b, s.ID[:]...)
		next = s.Slot + 1
	}
	return b
}

// DecodeMap decodes and validates a page map.
func DecodeMap(data []byte) (*Map, error) {
	m := &Map{}
	h, err := decodeMap(data, func(n int) { m.Extents = make([]Extent, 0, n) },
		func(e Extent) { m.Extents = append(m.Extents, e) })
	if err != nil {
		return nil, err
	}
	m.BlockSize, m.Pages, m.Sums = h.BlockSize, h.Pages, h.Sums
	return m, nil
}

// decodeMap decodes and validates a page map, handing its extents in order
// to add after telling reserve how many there are; it returns the rest of
// the map. DecodeMap and DecodeCompactMap share it, so that both accept
// exactly the same bytes.
func decodeMap(data []byte, reserve func(int), add func(Extent)) (*Map, error) {
	d := decoder{b: data}
	form := d.magic(mapMagic, sumsMagic, deltasMagic)
	deltas := form == 2
	m := &Map{
		BlockSize: uint32(d.uvarint(MaxBlockSize, "block size")),
		Pages:     uint32(d.uvarint(1<<32-1, "pages")),
	}
	if d.err == nil {
		if err := checkBlockSize(m.BlockSize); err != nil {
			return nil, err
		}
	}
	count := d.uvarint(MaxExtents, "extent count")
	if d.err == nil {
		// An extent takes at least 35 bytes.
		if count > uint64(len(d.b))/35 {
			d.fail("%d extents in %d bytes", count, len(d.b))
		} else if count > 0 {
			reserve(int(count))
		}
	}
	var page uint64
	hasDelta := false
	for i := uint64(0); i < count && d.err == nil; i++ {
		e := Extent{Page: uint32(page)}
		e.Count = uint32(d.uvarint(1<<32-1, "extent length"))
		e.Blob = d.id()
		e.BlobPage = uint32(d.uvarint(1<<32-1, "blob page"))
		e.Written = d.varint()
		if deltas {
			switch flag := d.byte(); flag {
			case 0:
			case 1:
				e.Base = d.id()
				e.BasePage = uint32(d.uvarint(1<<32-1, "base page"))
				if e.Base.IsZero() {
					d.fail("extent %d has the zero ID as its base", i)
				}
			default:
				d.fail("extent %d: delta flag %d", i, flag)
			}
		}
		if d.err != nil {
			break
		}
		page += uint64(e.Count)
		if page > uint64(m.Pages) {
			d.fail("extents run past %d pages", m.Pages)
			break
		}
		if err := checkExtent(int(i), &e, e.Page, m.Pages); err != nil {
			return nil, err
		}
		hasDelta = hasDelta || e.IsDelta()
		add(e)
	}
	if form > 0 {
		m.Sums = d.sums(m, deltas)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	if deltas != hasDelta {
		// One map, one encoding: TMM3 only for maps that need it.
		return nil, invalidf("map in TMM3 without a delta extent")
	}
	if page != uint64(m.Pages) {
		return nil, invalidf("extents cover %d of %d pages", page, m.Pages)
	}
	if err := checkSums(m.Sums, m.Windows()); err != nil {
		return nil, err
	}
	return m, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads a byte slice, remembering the first error so that decoding
// code reads straight through and checks once.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = invalidf("at byte %d: "+format, append([]any{d.off}, args...)...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.fail("need %d bytes, have %d", n, len(d.b))
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	d.off += n
	return p
}

// magic reads a magic and returns which of want it is.
func (d *decoder) magic(want ...[4]byte) int {
	got := d.take(4)
	if d.err != nil {
		return -1
	}
	for i, w := range want {
		if [4]byte(got) == w {
			return i
		}
	}
	d.fail("magic %q, want %q (is this tidemark format version %d?)", got, want[0][:], want[0][3]-'0')
	return -1
}

// sums reads a map's window sums; an empty list is refused unless
// emptyOK (TMM3), since a map without sums or deltas has one encoding, TMM1.
func (d *decoder) sums(m *Map, emptyOK bool) []SlotSum {
	if d.err != nil {
		return nil
	}
	n := d.uvarint(uint64(m.Windows()), "sum count")
	if d.err != nil {
		return nil
	}
	if n == 0 && emptyOK {
		return nil
	}
	if n == 0 || n > uint64(len(d.b))/33 {
		d.fail("%d sums in %d bytes", n, len(d.b))
		return nil
	}
	out := make([]SlotSum, 0, n)
	next := uint64(0)
	for range n {
		w := next + d.uvarint(1<<32-1, "sum window")
		if d.err != nil {
			return nil
		}
		if w >= uint64(m.Windows()) {
			d.fail("sum for window %d of %d", w, m.Windows())
			return nil
		}
		out = append(out, SlotSum{Slot: uint32(w), ID: d.id()})
		next = w + 1
	}
	return out
}

func (d *decoder) byte() byte {
	p := d.take(1)
	if p == nil {
		return 0
	}
	return p[0]
}

func (d *decoder) uvarint(max uint64, what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) {
		// A trailing zero byte is a non-minimal encoding: refusing it keeps
		// one value to one encoding.
		d.fail("bad %s", what)
		return 0
	}
	if v > max {
		d.fail("%s %d exceeds %d", what, v, max)
		return 0
	}
	d.take(n)
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) {
		d.fail("bad varint")
		return 0
	}
	d.take(n)
	return v
}

func (d *decoder) str(what string) string {
	n := d.uvarint(MaxNameLen, what+" length")
	return string(d.take(int(n)))
}

func (d *decoder) id() ID {
	var id ID
	copy(id[:], d.take(32))
	return id
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}
