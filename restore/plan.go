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

// plan is a snapshot laid out on this machine.
type plan struct {
	roots   []string // absolute destination of each root
	dirs    []entry  // parents before children; roots not included
	files   []entry
	links   []entry
	control []byte // global/pg_control
	group   bool   // the cluster allows group access (0750/0640)
}

func (p *plan) path(e *entry) string {
	if e.rel == "" {
		return p.roots[e.root]
	}
	return filepath.Join(p.roots[e.root], filepath.FromSlash(e.rel))
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

// allocated is the bytes a file occupies after a fresh restore: zero
// extents stay holes.
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

// loadPlan reads a snapshot's trees and page maps and places them: PGDATA
// at pgdata, each tablespace at its (possibly remapped) location.
func loadPlan(ctx context.Context, r Repository, s *repo.Snapshot, pgdata string, remap map[string]string) (*plan, error) {
	if len(s.Roots) != len(s.Tablespaces)+1 {
		return nil, fmt.Errorf("snapshot %s: %d roots for %d tablespaces: %w", s.ID, len(s.Roots), len(s.Tablespaces), filemap.ErrInvalid)
	}
	p := &plan{roots: []string{pgdata}}
	for _, ts := range s.Tablespaces {
		p.roots = append(p.roots, tablespaceLocation(ts.Path, remap))
	}
	trees, err := loadTrees(ctx, r, s.Roots)
	if err != nil {
		return nil, err
	}
	var mapIDs []blob.ID
	for i, root := range s.Roots {
		if err := p.walk(trees, root, i, "", 0, &mapIDs); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", s.ID, err)
		}
	}
	maps, err := loadMaps(ctx, r, mapIDs)
	if err != nil {
		return nil, err
	}
	for i := range p.files {
		f := &p.files[i]
		if f.node.Map.IsZero() {
			continue
		}
		f.fmap = maps[f.node.Map]
		if s.BlockSize > 0 && int(f.fmap.BlockSize) != s.BlockSize {
			return nil, fmt.Errorf("snapshot %s: %s has %d-byte pages, the cluster %d: %w", s.ID, f.rel, f.fmap.BlockSize, s.BlockSize, filemap.ErrInvalid)
		}
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

func (p *plan) walk(trees map[blob.ID]*filemap.Tree, id blob.ID, root int, rel string, depth int, mapIDs *[]blob.ID) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: directories nested deeper than %d: %w", rel, maxDepth, filemap.ErrInvalid)
	}
	t := trees[id]
	for _, n := range t.Nodes {
		e := entry{root: root, rel: path.Join(rel, n.Name), node: n}
		switch n.Type {
		case filemap.TypeDir:
			p.dirs = append(p.dirs, e)
			if err := p.walk(trees, n.Subtree, root, e.rel, depth+1, mapIDs); err != nil {
				return err
			}
		case filemap.TypeSymlink:
			p.links = append(p.links, e)
		case filemap.TypeFile:
			if !n.Map.IsZero() {
				*mapIDs = append(*mapIDs, n.Map)
			}
			p.files = append(p.files, e)
		default:
			return fmt.Errorf("%s: node type %d: %w", e.rel, n.Type, filemap.ErrInvalid)
		}
	}
	return nil
}

// loadTrees reads every directory tree below roots, one level of the
// hierarchy per ReadBlobs call so that reads are planned by pack. Equal
// directories (all the empty ones) share a blob and are read once.
func loadTrees(ctx context.Context, r Repository, roots []blob.ID) (map[blob.ID]*filemap.Tree, error) {
	trees := map[blob.ID]*filemap.Tree{}
	level := roots
	for depth := 0; len(level) > 0; depth++ {
		if depth > maxDepth {
			return nil, fmt.Errorf("directory trees nested deeper than %d: %w", maxDepth, filemap.ErrInvalid)
		}
		var mu sync.Mutex
		var next []blob.ID
		err := r.ReadBlobs(ctx, level, func(id blob.ID, data []byte) error {
			t, err := filemap.DecodeTree(data)
			if err != nil {
				return fmt.Errorf("directory tree %s: %w", id, err)
			}
			mu.Lock()
			defer mu.Unlock()
			trees[id] = t
			for _, n := range t.Nodes {
				if n.Type == filemap.TypeDir {
					next = append(next, n.Subtree)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		level = level[:0:0]
		for _, id := range next {
			if _, ok := trees[id]; !ok {
				level = append(level, id)
			}
		}
	}
	return trees, nil
}

func loadMaps(ctx context.Context, r Repository, ids []blob.ID) (map[blob.ID]*filemap.Map, error) {
	maps := make(map[blob.ID]*filemap.Map, len(ids))
	var mu sync.Mutex
	err := r.ReadBlobs(ctx, ids, func(id blob.ID, data []byte) error {
		m, err := filemap.DecodeMap(data)
		if err != nil {
			return fmt.Errorf("page map %s: %w", id, err)
		}
		mu.Lock()
		maps[id] = m
		mu.Unlock()
		return nil
	})
	return maps, err
}

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
