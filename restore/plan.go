package restore

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// controlPath is pg_control relative to PGDATA: written last.
const controlPath = "global/pg_control"

// entry is one node of the snapshot placed at its destination.
type entry struct {
	root int    // 0: PGDATA; i+1: tablespace i
	rel  string // slash-separated, relative to the root; "" for the root itself
	node filemap.Node
	fmap *filemap.Map // relation files
}

// plan is a snapshot laid out on this machine: its directories and links,
// and where to find its files. Files are not held: eachBatch streams them
// from the trees a few thousand at a time, so a restore's memory does not
// grow with the number of files.
type plan struct {
	roots    []string  // absolute destination of each root
	dirs     []entry   // parents before children; roots not included
	links    []entry   //
	listings []listing // every directory's entries: the roots first, then dirs
	control  []byte    // global/pg_control
	ctlNode  *filemap.Node
	group    bool    // the cluster allows group access (0750/0640)
	files    int64   // regular files but pg_control
	bytes    int64   // their sizes
	rootSize []int64 // their sizes under each root
	snap     *repo.Snapshot
}

// listing is a directory of the plan and the tree blobs that hold its
// entries in name order: its tree, or the parts of a big one.
type listing struct {
	root  int
	rel   string
	tree  blob.ID
	parts []filemap.TreePart // of a parted tree; tree is then the parted tree
}

func (p *plan) path(e *entry) string {
	if e.rel == "" {
		return p.roots[e.root]
	}
	return filepath.Join(p.roots[e.root], filepath.FromSlash(e.rel))
}

// listingPath is where a listing's directory goes.
func (p *plan) listingPath(l *listing) string {
	if l.rel == "" {
		return p.roots[l.root]
	}
	return filepath.Join(p.roots[l.root], filepath.FromSlash(l.rel))
}

func (p *plan) dirMode() uint32 {
	if p.group {
		return 0o750
	}
	return 0o700
}

func (p *plan) fileMode() uint32 {
	if p.group {
		return 0o640
	}
	return 0o600
}

// size is the length a file has after the restore.
func (e *entry) size() int64 {
	if e.fmap != nil {
		return int64(e.fmap.Pages) * int64(e.fmap.BlockSize)
	}
	return e.node.Size
}

// allocated is the space a file takes after the restore: its non-hole
// extents (restores write files sparse).
func (e *entry) allocated() int64 {
	if e.fmap == nil {
		return e.node.Size
	}
	var n int64
	for _, x := range e.fmap.Extents {
		if !x.Blob.IsZero() {
			n += int64(x.Count) * int64(e.fmap.BlockSize)
		}
	}
	return n
}

// loadPlan reads a snapshot's directory trees and places them: PGDATA at
// pgdata, each tablespace at its (possibly remapped) location. It keeps the
// directories, links and totals; files come later from eachBatch.
func loadPlan(ctx context.Context, r Repository, s *repo.Snapshot, pgdata string, remap map[string]string) (*plan, error) {
	if len(s.Roots) != len(s.Tablespaces)+1 {
		return nil, fmt.Errorf("snapshot %s: %d roots for %d tablespaces: %w", s.ID, len(s.Roots), len(s.Tablespaces), filemap.ErrInvalid)
	}
	p := &plan{roots: []string{pgdata}, snap: s}
	for _, ts := range s.Tablespaces {
		p.roots = append(p.roots, tablespaceLocation(ts.Path, remap))
	}
	p.rootSize = make([]int64, len(p.roots))
	if err := p.walkTrees(ctx, r); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", s.ID, err)
	}
	// Tablespace links point where the tablespaces now live.
	for i := range p.links {
		l := &p.links[i]
		if l.root != 0 {
			continue
		}
		if oid, ok := pg.ParseTablespaceLink(l.rel); ok {
			for j, ts := range s.Tablespaces {
				if ts.OID == oid {
					l.node.Target = p.roots[j+1]
				}
			}
		}
	}
	if g := findDir(p.dirs, "global"); g != nil {
		p.group = g.node.Mode&0o050 == 0o050
	}
	return p, nil
}

// walkTrees reads every directory tree below the roots, one level of the
// hierarchy per ReadBlobs call so that reads are planned by pack (a big
// directory's parts count as a level below it), and keeps what the plan
// holds: directories, links, and the sizes of the files.
func (p *plan) walkTrees(ctx context.Context, r Repository) error {
	type work struct {
		id   blob.ID
		li   int  // listing
		part bool // a part of a parted listing
	}
	var level []work
	for i, root := range p.snap.Roots {
		p.listings = append(p.listings, listing{root: i, tree: root})
		level = append(level, work{id: root, li: i})
	}
	for depth := 0; len(level) > 0; depth++ {
		if depth > maxDepth {
			return fmt.Errorf("directory trees nested deeper than %d: %w", maxDepth, filemap.ErrInvalid)
		}
		byID := map[blob.ID][]work{}
		var ids []blob.ID
		for _, w := range level {
			if byID[w.id] == nil {
				ids = append(ids, w.id)
			}
			byID[w.id] = append(byID[w.id], w)
		}
		var mu sync.Mutex
		var next []work
		err := r.ReadBlobs(ctx, ids, func(id blob.ID, data []byte) error {
			t, err := filemap.DecodeTree(data)
			if err != nil {
				return fmt.Errorf("directory tree %s: %w", id, err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, w := range byID[id] {
				l := p.listings[w.li]
				if len(t.Parts) > 0 {
					if w.part {
						return fmt.Errorf("%s: part %s of a directory is itself parted: %w", l.rel, id, filemap.ErrInvalid)
					}
					p.listings[w.li].parts = t.Parts
					for _, part := range t.Parts {
						next = append(next, work{id: part.ID, li: w.li, part: true})
					}
					continue
				}
				for _, n := range t.Nodes {
					e := entry{root: l.root, rel: path.Join(l.rel, n.Name), node: n}
					switch n.Type {
					case filemap.TypeDir:
						e.node.Content = nil
						p.dirs = append(p.dirs, e)
						p.listings = append(p.listings, listing{root: l.root, rel: e.rel, tree: n.Subtree})
						next = append(next, work{id: n.Subtree, li: len(p.listings) - 1})
					case filemap.TypeSymlink:
						p.links = append(p.links, e)
					case filemap.TypeFile:
						if isControl(&e) {
							p.ctlNode = &e.node
							continue
						}
						p.files++
						p.bytes += n.Size
						p.rootSize[l.root] += n.Size
					default:
						return fmt.Errorf("%s: node type %d: %w", e.rel, n.Type, filemap.ErrInvalid)
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		level = next
	}
	return nil
}

// Batches of files: at most batchFiles files, about batchSlots slots of
// pages (1 MiB each), and about batchMapBytes of stored page maps, so that
// the maps a batch holds and the destinations it records stay a few MiB
// however big its files. A map's extents cost about 90 bytes each in
// memory, a delta extent two destinations of 48 more; a map stores an
// extent in about 40 bytes, a delta extent 75. With slots alone, a restore
// of a 15 GB cluster after an incremental of a million page deltas held
// every map and destination at once: 206 MiB. (Variables for tests.)
var (
	batchFiles    = 8192
	batchMapBytes = int64(4 << 20)
)

const batchSlots = 1 << 18

// A stored extent takes at most maxExtentBytes, so a map of a file of up
// to lookupMapAbove/maxExtentBytes pages is counted at that bound, without
// a lookup: loadMaps looks every map up again to read it, and a million
// one-page files would pay the index twice. (A variable for tests.)
const maxExtentBytes = 96

var lookupMapAbove = int64(64 << 10)

// mapSize is what the page map of node n counts toward batchMapBytes: its
// stored size, or the bound for a small file.
func (p *plan) mapSize(ctx context.Context, r Repository, n *filemap.Node) int64 {
	if n.Map.IsZero() {
		return 0
	}
	bs := int64(p.snap.BlockSize)
	if bs <= 0 {
		bs = 1 << 10 // PostgreSQL's smallest BLCKSZ
	}
	if bound := (n.Size/bs + 1) * maxExtentBytes; bound <= lookupMapAbove {
		return bound
	}
	// A map missing from the index fails in loadMaps, with the others of
	// the batch.
	if loc, err := r.Lookup(ctx, n.Map); err == nil {
		return int64(loc.RawLength)
	}
	return 0
}

// treeReads is how many trees (or parts) eachBatch reads at once.
const treeReads = 8

// eachBatch streams the plan's files but pg_control in batches, each with
// its page maps read, in listing order and, within a directory, by name.
// visit, if not nil, sees every entry of every listing in name order
// before its batch is handed on, and end each listing after its last
// entry (a delta restore cleans up directories with them).
func (p *plan) eachBatch(ctx context.Context, r Repository, fn func([]entry) error, visit func(l *listing, n *filemap.Node) error, end func(l *listing) error) error {
	type unit struct {
		li   int
		id   blob.ID
		part int // index in the listing's parts; -1 for a whole tree
	}
	var units []unit
	for i, l := range p.listings {
		if len(l.parts) == 0 {
			units = append(units, unit{li: i, id: l.tree, part: -1})
			continue
		}
		for j, part := range l.parts {
			units = append(units, unit{li: i, id: part.ID, part: j})
		}
	}
	var batch []entry
	slots, mapBytes := 0, int64(0)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := p.loadMaps(ctx, r, batch); err != nil {
			return err
		}
		err := fn(batch)
		batch, slots, mapBytes = nil, 0, 0
		return err
	}
	done := make([]bool, len(p.listings))
	finish := func(li int) error {
		if end != nil && !done[li] {
			done[li] = true
			return end(&p.listings[li])
		}
		return nil
	}
	for len(units) > 0 {
		n := min(len(units), treeReads)
		group := units[:n]
		units = units[n:]
		ids := make([]blob.ID, 0, n)
		for _, u := range group {
			ids = append(ids, u.id)
		}
		trees := map[blob.ID]*filemap.Tree{}
		var mu sync.Mutex
		err := r.ReadBlobs(ctx, ids, func(id blob.ID, data []byte) error {
			t, err := filemap.DecodeTree(data)
			if err != nil {
				return fmt.Errorf("directory tree %s: %w", id, err)
			}
			mu.Lock()
			trees[id] = t
			mu.Unlock()
			return nil
		})
		if err != nil {
			return err
		}
		for gi, u := range group {
			l := &p.listings[u.li]
			t := trees[u.id]
			if u.part >= 0 {
				next := ""
				if u.part+1 < len(l.parts) {
					next = l.parts[u.part+1].First
				}
				if err := filemap.CheckPart(l.parts[u.part], next, t); err != nil {
					return fmt.Errorf("%s: %w", l.rel, err)
				}
			}
			for i := range t.Nodes {
				nd := &t.Nodes[i]
				if visit != nil {
					if err := visit(l, nd); err != nil {
						return err
					}
				}
				e := entry{root: l.root, rel: path.Join(l.rel, nd.Name), node: *nd}
				if nd.Type != filemap.TypeFile || isControl(&e) {
					continue
				}
				batch = append(batch, e)
				slots += int((nd.Size + blob.SlotSize - 1) / blob.SlotSize)
				mapBytes += p.mapSize(ctx, r, nd)
				if len(batch) >= batchFiles || slots >= batchSlots || mapBytes >= batchMapBytes {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			// A listing ends with its last unit.
			last := gi+1 == len(group) && (len(units) == 0 || units[0].li != u.li) || gi+1 < len(group) && group[gi+1].li != u.li
			if last {
				if err := finish(u.li); err != nil {
					return err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	for i := range p.listings {
		if err := finish(i); err != nil {
			return err
		}
	}
	return nil
}

// loadMaps reads the page maps of the relation files of a batch.
func (p *plan) loadMaps(ctx context.Context, r Repository, files []entry) error {
	want := map[blob.ID][]int{}
	var ids []blob.ID
	for i := range files {
		if id := files[i].node.Map; !id.IsZero() {
			if want[id] == nil {
				ids = append(ids, id)
			}
			want[id] = append(want[id], i)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	var mu sync.Mutex
	err := r.ReadBlobs(ctx, ids, func(id blob.ID, data []byte) error {
		m, err := filemap.DecodeMap(data)
		if err != nil {
			return fmt.Errorf("page map %s: %w", id, err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, i := range want[id] {
			f := &files[i]
			if p.snap.BlockSize > 0 && int(m.BlockSize) != p.snap.BlockSize {
				return fmt.Errorf("snapshot %s: %s has %d-byte pages, the cluster %d: %w", p.snap.ID, f.rel, m.BlockSize, p.snap.BlockSize, filemap.ErrInvalid)
			}
			f.fmap = m
		}
		return nil
	})
	return err
}

func findDir(dirs []entry, rel string) *entry {
	for i := range dirs {
		if dirs[i].root == 0 && dirs[i].rel == rel {
			return &dirs[i]
		}
	}
	return nil
}

// tablespaceLocation applies --tablespace-map.
func tablespaceLocation(orig string, remap map[string]string) string {
	if n, ok := remap[orig]; ok {
		return n
	}
	return orig
}

// maxDepth bounds directory nesting, so that a corrupt tree referring to
// itself cannot recurse forever.
const maxDepth = 64

// readWhole reads a file of the snapshot that is stored as content chunks.
func readWhole(ctx context.Context, r Repository, n filemap.Node) ([]byte, error) {
	buf := make([]byte, 0, n.Size)
	for _, id := range n.Content {
		var err error
		if buf, err = r.ReadBlob(ctx, id, buf); err != nil {
			return nil, err
		}
	}
	if int64(len(buf)) != n.Size {
		return nil, fmt.Errorf("%s: %d bytes of content, the tree says %d: %w", n.Name, len(buf), n.Size, filemap.ErrInvalid)
	}
	return buf, nil
}

// controlOf reads a snapshot's pg_control without laying out the rest.
func controlOf(ctx context.Context, r Repository, s *repo.Snapshot) (*pg.ControlFile, error) {
	if len(s.Roots) == 0 {
		return nil, fmt.Errorf("snapshot %s has no root: %w", s.ID, filemap.ErrInvalid)
	}
	id := s.Roots[0]
	var node *filemap.Node
	for _, name := range []string{"global", "pg_control"} {
		b, err := r.ReadBlob(ctx, id, nil)
		if err != nil {
			return nil, err
		}
		t, err := filemap.DecodeTree(b)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: directory tree %s: %w", s.ID, id, err)
		}
		node = t.Find(name)
		if node == nil {
			return nil, fmt.Errorf("snapshot %s has no %s: %w", s.ID, controlPath, filemap.ErrInvalid)
		}
		id = node.Subtree
	}
	b, err := readWhole(ctx, r, *node)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %s: %w", s.ID, controlPath, err)
	}
	cf, err := pg.ParseControlFile(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %s: %w", s.ID, controlPath, err)
	}
	return cf, nil
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
