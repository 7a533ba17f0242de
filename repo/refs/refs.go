// Package refs finds every blob that snapshots refer to: it reads the
// directory trees and page maps below a snapshot's roots (docs/snapshot.md,
// repo/filemap) and records, for each of those metadata blobs, the
// metadata and data blobs it points at. Garbage collection marks with it;
// verify resolves snapshots with it.
//
// Each metadata blob is read and decoded once however many snapshots share
// it (an incremental snapshot shares almost all of its trees and maps with
// its parent), so the cost of walking many snapshots is the cost of their
// distinct metadata. A blob that cannot be read or decoded is recorded on its
// node instead of stopping the walk; a storage failure that says nothing
// about the blob (a timeout, the context ending) stops it.
//
// It is not a reader of file contents (restore) and does not check data
// blobs beyond recording their IDs.
package refs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/index"
)

// Reader reads blobs of the repository. *repo.Repo has it.
type Reader interface {
	ReadBlobs(ctx context.Context, ids []blob.ID, fn func(id blob.ID, data []byte) error) error
	ReadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
	Lookup(ctx context.Context, id blob.ID) (index.Location, error)
}

// Node is one metadata blob: a directory tree or a page map.
type Node struct {
	Kind blob.Kind // blob.KindTree or blob.KindFileMap
	// Trees and Maps are the metadata blobs it points at (subdirectories,
	// page maps of relation files); Data the data blobs (file content
	// chunks, page extents), without the zero sentinel. Each is
	// duplicate-free.
	Trees, Maps []blob.ID
	Data        []blob.ID
	// Err is why the blob could not be read or decoded (then the lists are
	// empty): a *repo.CorruptError, a *repo.BlobNotFoundError or a
	// filemap.ErrInvalid.
	Err error
}

// Graph holds the metadata blobs read so far. It is not safe for concurrent
// use; its methods read in parallel themselves.
type Graph struct {
	r     Reader
	log   *slog.Logger
	nodes map[blob.ID]*Node
	// MetaBytes counts the plaintext bytes of metadata read.
	MetaBytes int64
	// MetaBlobs counts the metadata blobs read.
	MetaBlobs int64
}

// New returns an empty graph reading through r.
func New(r Reader, log *slog.Logger) *Graph {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Graph{r: r, log: log, nodes: make(map[blob.ID]*Node)}
}

// maxLevels bounds the depth of the metadata hierarchy (directories nested
// 64 deep, then a map), so that a corrupt tree pointing at its own ancestor
// cannot make the walk go on forever.
const maxLevels = 66

// Node returns the node of a metadata blob Load has read, or nil.
func (g *Graph) Node(id blob.ID) *Node { return g.nodes[id] }

// Len returns the number of metadata blobs held.
func (g *Graph) Len() int { return len(g.nodes) }

// Load reads every metadata blob reachable from roots (the root trees of a
// snapshot) that the graph does not hold yet, one level of the hierarchy
// per batch so that reads are planned by pack. It returns an error only for
// failures that say nothing about the blobs (storage unreachable, the
// context ending); damaged or missing blobs are recorded on their nodes.
func (g *Graph) Load(ctx context.Context, roots []blob.ID) error {
	level := map[blob.ID]blob.Kind{}
	for _, id := range roots {
		if _, ok := g.nodes[id]; !ok {
			level[id] = blob.KindTree
		}
	}
	for depth := 0; len(level) > 0; depth++ {
		if depth >= maxLevels {
			for id, k := range level {
				g.nodes[id] = &Node{Kind: k, Err: fmt.Errorf("metadata nested deeper than %d levels: %w", maxLevels, filemap.ErrInvalid)}
			}
			return nil
		}
		if err := g.readLevel(ctx, level); err != nil {
			return err
		}
		next := map[blob.ID]blob.Kind{}
		for id := range level {
			n := g.nodes[id]
			for _, c := range n.Trees {
				if _, ok := g.nodes[c]; !ok {
					next[c] = blob.KindTree
				}
			}
			for _, c := range n.Maps {
				if _, ok := g.nodes[c]; !ok {
					next[c] = blob.KindFileMap
				}
			}
		}
		level = next
	}
	return nil
}

// readLevel reads the blobs of one level in one batch; when the batch fails
// on a damaged blob, blob by blob, to tell which.
func (g *Graph) readLevel(ctx context.Context, level map[blob.ID]blob.Kind) error {
	// A blob the index lacks would fail the whole batch before any read:
	// sort those out first.
	ids := make([]blob.ID, 0, len(level))
	decoded := make(map[blob.ID]*Node, len(level))
	for id := range level {
		if _, err := g.r.Lookup(ctx, id); err != nil {
			if !blobFault(err) {
				return err
			}
			decoded[id] = &Node{Kind: level[id], Err: err}
			continue
		}
		ids = append(ids, id)
	}
	var mu sync.Mutex
	decode := func(id blob.ID, data []byte) error {
		n := decodeNode(level[id], data)
		mu.Lock()
		decoded[id] = n
		g.MetaBytes += int64(len(data))
		g.MetaBlobs++
		mu.Unlock()
		return nil
	}
	err := g.r.ReadBlobs(ctx, ids, decode)
	if err != nil && !blobFault(err) {
		return err
	}
	if err != nil {
		g.log.Debug("batch read of metadata failed; reading blob by blob", "err", err)
		var buf []byte
		for _, id := range ids {
			if _, ok := decoded[id]; ok {
				continue
			}
			buf, err = g.r.ReadBlob(ctx, id, buf[:0])
			if err != nil {
				if !blobFault(err) {
					return err
				}
				decoded[id] = &Node{Kind: level[id], Err: err}
				continue
			}
			decode(id, buf)
		}
	}
	for id := range level {
		n := decoded[id]
		if n == nil {
			n = &Node{Kind: level[id], Err: fmt.Errorf("blob %s was not delivered: %w", id, repo.ErrCorrupt)}
		}
		g.nodes[id] = n
	}
	return nil
}

// decodeNode decodes a tree or a map into a node.
func decodeNode(k blob.Kind, data []byte) *Node {
	n := &Node{Kind: k}
	seen := map[blob.ID]bool{}
	add := func(list *[]blob.ID, id blob.ID) {
		if id.IsZero() || seen[id] {
			return
		}
		seen[id] = true
		*list = append(*list, id)
	}
	switch k {
	case blob.KindTree:
		t, err := filemap.DecodeTree(data)
		if err != nil {
			n.Err = fmt.Errorf("directory tree: %w", err)
			return n
		}
		// A big directory's parts are trees of their own.
		for _, p := range t.Parts {
			add(&n.Trees, p.ID)
		}
		for _, e := range t.Nodes {
			switch e.Type {
			case filemap.TypeDir:
				add(&n.Trees, e.Subtree)
			case filemap.TypeFile:
				if !e.Map.IsZero() {
					add(&n.Maps, e.Map)
				}
				for _, c := range e.Content {
					add(&n.Data, c)
				}
			}
		}
	case blob.KindFileMap:
		m, err := filemap.DecodeMap(data)
		if err != nil {
			n.Err = fmt.Errorf("page map: %w", err)
			return n
		}
		m.Blobs(func(id blob.ID) { add(&n.Data, id) })
	default:
		n.Err = fmt.Errorf("kind %s is not metadata: %w", k, filemap.ErrInvalid)
	}
	return n
}

// blobFault reports whether err says something about a blob (damaged,
// missing, not indexed, undecodable) rather than about reaching the store.
func blobFault(err error) bool {
	return errors.Is(err, repo.ErrCorrupt) || errors.Is(err, repo.ErrBlobNotFound) || errors.Is(err, filemap.ErrInvalid)
}

// Walk calls fn once for every distinct blob reachable from roots, metadata
// (with its node) and data (node nil), in no particular order. Blobs Load
// has not read are reported as metadata with a nil node too; call Load
// first.
func (g *Graph) Walk(roots []blob.ID, seen map[blob.ID]struct{}, fn func(id blob.ID, meta bool, n *Node)) {
	if seen == nil {
		seen = map[blob.ID]struct{}{}
	}
	stack := append([]blob.ID(nil), roots...)
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if _, ok := seen[id]; ok {
			continue
		}
		seen[id] = struct{}{}
		n := g.nodes[id]
		fn(id, true, n)
		if n == nil {
			continue
		}
		for _, d := range n.Data {
			if _, ok := seen[d]; !ok {
				seen[d] = struct{}{}
				fn(d, false, nil)
			}
		}
		stack = append(stack, n.Trees...)
		stack = append(stack, n.Maps...)
	}
}
