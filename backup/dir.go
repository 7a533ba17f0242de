package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sync/atomic"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// dir is a directory being captured. Its tree is encoded and stored when
// the last of its children is done (pending reaches zero): children finish
// in whatever order workers finish them, and only the directories on the
// walker's path and those waiting for files are held in memory.
type dir struct {
	c    *capture
	abs  string
	rel  string
	ents []entry
	// gone marks entries that vanished before they could be read; they
	// are left out of the tree.
	gone    []bool
	pending atomic.Int64
	up      *dirSlot      // where this directory's tree goes, nil for a root
	done    func(blob.ID) // roots: receives the tree
	prev    *filemap.Tree // the reference snapshot's tree, nil if none
	// part receives the tree of a part of a big directory (partedDir)
	// and its blob, nil for an empty one; set instead of up and done.
	part func(t *filemap.Tree, id blob.ID)
}

// walkRoot captures a root (PGDATA or a tablespace directory).
func (c *capture) walkRoot(d *dir, prev blob.ID, ownDir string) {
	t, err := c.loadTree(prev)
	if err != nil {
		c.fail(err)
		return
	}
	d.prev = t
	c.walkDir(d, ownDir)
}

// walkDir lists d, hands its files to the workers and walks its
// subdirectories depth first. Entries are all listed before any child is
// started, so workers can fill in d.ents while the walker goes on. A
// directory of more than filemap.PartMax entries is walked in parts
// (walkParted).
func (c *capture) walkDir(d *dir, ownDir string) {
	dn, err := readDirNames(d.abs, os.TempDir(), c.opts.namesBatch)
	var ents []entry
	if err == nil && dn.n > c.opts.partMax && ownDir == "" {
		c.walkParted(d, dn)
		dn.close()
		return
	}
	if err == nil {
		var names []string
		names, err = dn.strings()
		dn.close()
		if err == nil {
			ents, err = listNames(d.abs, d.rel, ownDir, names, dn.unlogged)
		}
	}
	switch {
	case err != nil && d.up != nil && errors.Is(err, fs.ErrNotExist):
		// Dropped while we walked (DROP DATABASE): WAL replay removes it
		// anyway.
		d.up.d.gone[d.up.idx] = true
	case err != nil:
		c.fail(err)
		return
	}
	if d.prev != nil && len(d.prev.Parts) > 0 {
		// The directory was big at the reference: its parts, whole.
		if d.prev, err = c.loadParts(d.prev, 0, len(d.prev.Parts)); err != nil {
			c.fail(err)
			return
		}
	}
	if d.prev != nil && !sameDatabase(ents, d.prev) {
		// The database directory was made anew (dropped and created with
		// the same OID, or copied back by ALTER DATABASE SET TABLESPACE):
		// nothing in it is the reference's file any more.
		d.prev = nil
	}
	c.walkEntries(d, ents)
}

// walkEntries hands the listed entries of d to the workers and walks its
// subdirectories.
func (c *capture) walkEntries(d *dir, ents []entry) {
	d.ents = ents
	d.gone = make([]bool, len(ents))
	d.pending.Store(1) // the listing itself, released below
	batch := c.newFileBatch(d)
	var subdirs []*dir
	for i := range d.ents {
		e := &d.ents[i]
		slot := &dirSlot{d: d, idx: i, abs: filepath.Join(d.abs, e.node.Name)}
		rel := path.Join(d.rel, e.node.Name)
		switch {
		case e.node.Type == filemap.TypeSymlink:
			if e.tablespace != 0 && d.rel == "pg_tblspc" {
				c.spcs = append(c.spcs, tablespaceRoot{oid: e.tablespace, target: e.node.Target})
			}
		case e.node.Type == filemap.TypeDir && e.emptyDir:
			e.node.Subtree = c.emptyTree
		case e.node.Type == filemap.TypeDir:
			d.pending.Add(1)
			subdirs = append(subdirs, &dir{c: c, abs: slot.abs, rel: rel, up: slot})
		case rel == "global/pg_control":
			d.pending.Add(1)
			c.control = slot
		default:
			d.pending.Add(1)
			batch.add(slot)
		}
	}
	batch.flush()
	// Subdirectories in batches whose reference trees come in one
	// ReadBlobs call: one GET each would add up on S3 for a cluster with
	// many databases.
	for len(subdirs) > 0 && c.ctx.Err() == nil {
		n := min(len(subdirs), dirBatchSize)
		if err := c.loadSubtrees(d, subdirs[:n]); err != nil {
			c.fail(err)
			return
		}
		for _, child := range subdirs[:n] {
			if c.ctx.Err() != nil {
				return
			}
			c.walkDir(child, "")
		}
		subdirs = subdirs[n:]
	}
	d.childDone()
}

// dirBatchSize is how many subdirectories' reference trees are read at once.
const dirBatchSize = 32

// loadSubtrees reads the reference trees of the subdirectories children
// of d.
func (c *capture) loadSubtrees(d *dir, children []*dir) error {
	want := map[blob.ID][]*dir{}
	var ids []blob.ID
	for _, ch := range children {
		id := d.prevSubtree(ch.name())
		if id.IsZero() {
			continue
		}
		if want[id] == nil {
			ids = append(ids, id)
		}
		want[id] = append(want[id], ch)
	}
	if len(ids) == 0 {
		return nil
	}
	err := c.store.ReadBlobs(c.ctx, ids, func(id blob.ID, data []byte) error {
		t, err := filemap.DecodeTree(data)
		if err != nil {
			return fmt.Errorf("tree %s: %w", id, err)
		}
		for _, ch := range want[id] {
			ch.prev = t // read-only
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read trees of snapshot %s under %s: %w", c.ref.snap.ID, d.abs, err)
	}
	return nil
}

// name is the directory's own name (its entry in its parent).
func (d *dir) name() string { return d.up.d.ents[d.up.idx].node.Name }

// sameDatabase reports whether a directory is the one the reference saw:
// a database directory's PG_VERSION is written once, when the database is
// created, so a changed one means a new directory. Other directories have
// no PG_VERSION, or keep it (PGDATA's own) for the cluster's lifetime.
func sameDatabase(ents []entry, prev *filemap.Tree) bool {
	for _, e := range ents {
		if e.node.Name != "PG_VERSION" {
			continue
		}
		p := prev.Find("PG_VERSION")
		return p != nil && p.Inode == e.node.Inode && p.ModTime == e.node.ModTime && p.Size == e.node.Size
	}
	return true
}

// prevSubtree returns the reference's tree of subdirectory name.
func (d *dir) prevSubtree(name string) blob.ID {
	if d.prev == nil {
		return blob.ID{}
	}
	if n := d.prev.Find(name); n != nil && n.Type == filemap.TypeDir {
		return n.Subtree
	}
	return blob.ID{}
}

// prevNode returns the reference's entry called name, or nil.
func (d *dir) prevNode(name string) *filemap.Node {
	if d.prev == nil {
		return nil
	}
	return d.prev.Find(name)
}

// childDone is called once per child (and once for the listing); the last
// call stores the tree and reports to the parent.
func (d *dir) childDone() {
	if d.pending.Add(-1) != 0 {
		return
	}
	c := d.c
	if c.ctx.Err() != nil {
		return
	}
	t := &filemap.Tree{Nodes: make([]filemap.Node, 0, len(d.ents))}
	for i := range d.ents {
		if !d.gone[i] {
			t.Nodes = append(t.Nodes, d.ents[i].node)
		}
	}
	if d.part != nil && len(t.Nodes) == 0 {
		d.part(t, blob.ID{}) // every entry of the part vanished
		return
	}
	id, err := c.addTree(t)
	if err != nil {
		c.fail(fmt.Errorf("directory %s: %w", d.abs, err))
		return
	}
	d.ents, d.prev = nil, nil
	if d.part != nil {
		d.part(t, id)
		return
	}
	if d.up == nil {
		d.done(id)
		return
	}
	d.up.d.ents[d.up.idx].node.Subtree = id
	d.up.d.childDone()
}

// finishChild sets a finished file's node and reports it.
func (s *dirSlot) finish(n filemap.Node) {
	s.d.ents[s.idx].node = n
	s.d.childDone()
}

// vanish reports a file that disappeared before it could be read.
func (s *dirSlot) vanish() {
	s.d.gone[s.idx] = true
	s.d.childDone()
}
