package backup

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// A directory of more than filemap.PartMax entries (a database with a
// million relation files) is walked in parts: its names are read and
// sorted (a few bytes each), then taken a part at a time (filemap.PartEnds
// says where one ends), each part listed, compared with the reference's
// entries of the same names and captured like a directory of its own, its
// tree stored as one part blob. The directory's tree lists the parts
// (filemap.Tree.Parts). Only the parts in flight are held, never the whole
// directory, so memory does not grow with the number of files, and an
// unchanged part deduplicates.

// partedDir collects the parts of a directory walked in parts.
type partedDir struct {
	c       *capture
	d       *dir // the directory: its up or done receives the tree
	prev    *filemap.Tree
	pending atomic.Int64 // parts not done, and the walk

	mu    sync.Mutex
	parts []filemap.TreePart // by part number; Count 0: empty

	// The reference's parts loaded for the part being walked, and where
	// they sit among its parts: consecutive parts mostly need the same.
	cache      *filemap.Tree
	cacheFirst int
	cacheEnd   int
}

// walkParted walks directory d, whose names are dn, in parts.
func (c *capture) walkParted(d *dir, dn *dirNames) {
	unlogged := dn.unlogged
	a := &partedDir{c: c, d: d, prev: d.prev}
	a.pending.Store(1)
	// A database directory made anew (see sameDatabase) keeps nothing of
	// the reference's.
	if a.prev != nil && dn.pgVersion {
		e, ok, err := listEntry(d.abs, d.rel, "", "PG_VERSION", unlogged)
		if err != nil {
			c.fail(err)
			return
		}
		p, err := a.prevRange("PG_VERSION", "PG_VERSION")
		if err != nil {
			c.fail(err)
			return
		}
		if !ok || !sameDatabase([]entry{e}, p) {
			a.prev = nil
		}
	}
	var cur []entry
	stopped := false
	err := dn.each(func(name string) bool {
		if c.ctx.Err() != nil {
			stopped = true
			return false
		}
		e, ok, err := listEntry(d.abs, d.rel, "", name, unlogged)
		if err != nil {
			c.fail(err)
			stopped = true
			return false
		}
		if !ok {
			return true
		}
		cur = append(cur, e)
		if filemap.PartEndsScaled(name, len(cur), c.opts.partMax) {
			if !a.walkPart(cur) {
				stopped = true
				return false
			}
			cur = nil
		}
		return true
	})
	if err != nil {
		c.fail(fmt.Errorf("directory %s: %w", d.abs, err))
		return
	}
	if stopped {
		return
	}
	if len(cur) > 0 && !a.walkPart(cur) {
		return
	}
	a.partDone()
}

// walkPart captures one part; false when the capture stopped.
func (a *partedDir) walkPart(ents []entry) bool {
	c := a.c
	prev, err := a.prevRange(ents[0].node.Name, ents[len(ents)-1].node.Name)
	if err != nil {
		c.fail(err)
		return false
	}
	a.mu.Lock()
	i := len(a.parts)
	a.parts = append(a.parts, filemap.TreePart{})
	a.mu.Unlock()
	a.pending.Add(1)
	pd := &dir{c: c, abs: a.d.abs, rel: a.d.rel, prev: prev}
	pd.part = func(t *filemap.Tree, id blob.ID) {
		if !id.IsZero() {
			a.mu.Lock()
			a.parts[i] = filemap.TreePart{First: t.Nodes[0].Name, Count: uint32(len(t.Nodes)), ID: id}
			a.mu.Unlock()
		}
		a.partDone()
	}
	c.walkEntries(pd, ents)
	return c.ctx.Err() == nil
}

// partDone is called once per part and once for the walk; the last call
// stores the directory's tree and reports it.
func (a *partedDir) partDone() {
	if a.pending.Add(-1) != 0 {
		return
	}
	c, d := a.c, a.d
	if c.ctx.Err() != nil {
		return
	}
	t := &filemap.Tree{}
	for _, p := range a.parts {
		if p.Count > 0 {
			t.Parts = append(t.Parts, p)
		}
	}
	id, err := c.addTree(t)
	if err != nil {
		c.fail(fmt.Errorf("directory %s: %w", d.abs, err))
		return
	}
	a.parts, a.cache, a.prev = nil, nil, nil
	if d.up == nil {
		d.done(id)
		return
	}
	d.up.d.ents[d.up.idx].node.Subtree = id
	d.up.d.childDone()
}

// prevRange returns the reference's entries named first to last, as a
// tree (nil without a reference): of a reference directory in parts, the
// parts that hold them are read.
func (a *partedDir) prevRange(first, last string) (*filemap.Tree, error) {
	p := a.prev
	if p == nil {
		return nil, nil
	}
	if len(p.Parts) > 0 {
		// The parts whose names can fall in [first, last].
		lo, _ := slices.BinarySearchFunc(p.Parts, first, func(x filemap.TreePart, n string) int { return strings.Compare(x.First, n) })
		if lo == len(p.Parts) || p.Parts[lo].First > first {
			lo = max(lo-1, 0)
		}
		hi, found := slices.BinarySearchFunc(p.Parts, last, func(x filemap.TreePart, n string) int { return strings.Compare(x.First, n) })
		if found {
			hi++
		}
		if a.cache == nil || lo < a.cacheFirst || hi > a.cacheEnd {
			t, err := a.c.loadParts(p, lo, hi)
			if err != nil {
				return nil, err
			}
			a.cache, a.cacheFirst, a.cacheEnd = t, lo, hi
		}
		p = a.cache
	}
	lo, _ := slices.BinarySearchFunc(p.Nodes, first, func(x filemap.Node, n string) int { return strings.Compare(x.Name, n) })
	hi, found := slices.BinarySearchFunc(p.Nodes, last, func(x filemap.Node, n string) int { return strings.Compare(x.Name, n) })
	if found {
		hi++
	}
	return &filemap.Tree{Nodes: p.Nodes[lo:hi]}, nil
}

// loadParts reads parts [lo, hi) of parted tree t and returns their entries
// as one tree, each part checked against its entry in t.
func (c *capture) loadParts(t *filemap.Tree, lo, hi int) (*filemap.Tree, error) {
	parts := t.Parts[lo:hi]
	if len(parts) == 0 {
		return &filemap.Tree{}, nil
	}
	ids := make([]blob.ID, len(parts))
	for i, p := range parts {
		ids[i] = p.ID
	}
	got := map[blob.ID]*filemap.Tree{}
	var mu sync.Mutex
	err := c.store.ReadBlobs(c.ctx, ids, func(id blob.ID, data []byte) error {
		pt, err := filemap.DecodeTree(data)
		if err != nil {
			return fmt.Errorf("tree part %s: %w", id, err)
		}
		mu.Lock()
		got[id] = pt
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read tree parts of snapshot %s: %w", c.ref.snap.ID, err)
	}
	out := &filemap.Tree{}
	for i, p := range parts {
		next := ""
		if lo+i+1 < len(t.Parts) {
			next = t.Parts[lo+i+1].First
		}
		pt := got[p.ID]
		if err := filemap.CheckPart(p, next, pt); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", c.ref.snap.ID, err)
		}
		out.Nodes = append(out.Nodes, pt.Nodes...)
	}
	return out, nil
}
