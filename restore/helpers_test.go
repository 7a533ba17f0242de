package restore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

const (
	testSegSize = 1 << 20 // 1 MiB WAL segments keep synthetic archives small
	testBS      = 8192
	// testPartMax: directories of more entries are stored in parts; small,
	// so that tests of big directories stay small.
	testPartMax = 100
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TIDEMARK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newRepo makes an empty repository in memory.
func newRepo(t testing.TB) *repo.Repo {
	t.Helper()
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "test")
	if err != nil {
		t.Fatal(err)
	}
	opts := repo.InitOptions{Key: spec, PackSize: repo.MinPackSize}
	opts.Logger = testLogger(t)
	r, _, err := repo.Init(ctx, mem.New(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// fixture reads a file of pg's PostgreSQL 15 fixtures.
func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "pg", "testdata", "pg15", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testSysID(t testing.TB) uint64 {
	cf, err := pg.ParseControlFile(fixture(t, "pg_control"))
	if err != nil {
		t.Fatal(err)
	}
	return cf.SystemIdentifier
}

// tfile is a file of a hand-built snapshot. A relation file (rel) is stored
// as slots of base with the pages listed in patched taken from data as a
// patch, the way an incremental backup stores it; any other file as chunks.
type tfile struct {
	data    []byte
	rel     bool
	base    []byte   // relation: the content the slots hold (data when nil)
	patched []uint32 // relation: pages of data stored in a patch blob
	// delta, for a relation: the patch holds each patched page XORed with
	// the base's, as deltas on the window's slot (pages of an all-zero
	// window, which has no slot blob, stay plain).
	delta  bool
	noSums bool // relation: no window sums in the map, as before they existed
	// oldPatch, for a relation: the patch is a KindPatch blob of whole
	// pages, as backups wrote before KindPatchRuns.
	oldPatch bool
	// fmap, for a relation, builds its page map instead of storeMap
	// (data is then only what the restore must produce).
	fmap  func(ctx context.Context, w *repo.Writer) *filemap.Map
	mtime int64
	link  string // a symbolic link to this target instead of a file
	dir   bool   // an empty directory
}

// buildTree stores files (slash paths) as trees and returns the root.
func buildTree(t testing.TB, ctx context.Context, w *repo.Writer, files map[string]tfile) blob.ID {
	t.Helper()
	type dirNode struct {
		children map[string]*dirNode
		file     *tfile
		name     string
	}
	root := &dirNode{children: map[string]*dirNode{}}
	for p, f := range files {
		cur := root
		parts := strings.Split(p, "/")
		for i, part := range parts {
			next := cur.children[part]
			if next == nil {
				next = &dirNode{children: map[string]*dirNode{}, name: part}
				cur.children[part] = next
			}
			if i == len(parts)-1 && !f.dir {
				f := f
				next.file = &f
			}
			cur = next
		}
	}
	var store func(d *dirNode) blob.ID
	store = func(d *dirNode) blob.ID {
		var tr filemap.Tree
		names := make([]string, 0, len(d.children))
		for n := range d.children {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			c := d.children[n]
			node := filemap.Node{Name: n, UID: 70, GID: 70, ModTime: 1e18}
			switch {
			case c.file != nil && c.file.link != "":
				node.Type, node.Mode, node.Target = filemap.TypeSymlink, 0o777, c.file.link
			case c.file != nil:
				node.Type, node.Mode, node.Size = filemap.TypeFile, 0o600, int64(len(c.file.data))
				if c.file.mtime != 0 {
					node.ModTime = c.file.mtime
				}
				if c.file.rel {
					node.Map = storeMap(t, ctx, w, c.file)
				} else {
					for off := 0; off < len(c.file.data); off += filemap.ChunkSize {
						node.Content = append(node.Content, add(t, ctx, w, blob.KindFile, c.file.data[off:min(off+filemap.ChunkSize, len(c.file.data))]))
					}
				}
			default:
				node.Type, node.Mode = filemap.TypeDir, 0o700
				node.Subtree = store(c)
			}
			tr.Nodes = append(tr.Nodes, node)
		}
		if len(tr.Nodes) > testPartMax {
			// A big directory is stored in parts, as a backup does (parts
			// of testPartMax entries: readers take any cut).
			var parted filemap.Tree
			for len(tr.Nodes) > 0 {
				n := min(len(tr.Nodes), testPartMax)
				part := &filemap.Tree{Nodes: tr.Nodes[:n]}
				b, err := filemap.EncodeTree(part)
				if err != nil {
					t.Fatal(err)
				}
				parted.Parts = append(parted.Parts, filemap.TreePart{First: part.Nodes[0].Name, Count: uint32(n), ID: add(t, ctx, w, blob.KindTree, b)})
				tr.Nodes = tr.Nodes[n:]
			}
			tr = parted
		}
		b, err := filemap.EncodeTree(&tr)
		if err != nil {
			t.Fatal(err)
		}
		return add(t, ctx, w, blob.KindTree, b)
	}
	return store(root)
}

func add(t testing.TB, ctx context.Context, w *repo.Writer, k blob.Kind, data []byte) blob.ID {
	t.Helper()
	id, err := w.Add(ctx, k, data)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// storeMap stores a relation file as full slots of its base plus one patch
// of the patched pages, and returns its page map blob.
func storeMap(t testing.TB, ctx context.Context, w *repo.Writer, f *tfile) blob.ID {
	if f.fmap != nil {
		b, err := filemap.EncodeMap(f.fmap(ctx, w))
		if err != nil {
			t.Fatal(err)
		}
		return add(t, ctx, w, blob.KindFileMap, b)
	}
	base := f.base
	if base == nil {
		base = f.data
	}
	if len(f.data)%testBS != 0 || len(base) != len(f.data) {
		t.Fatalf("relation file of %d bytes (base %d)", len(f.data), len(base))
	}
	pages := uint32(len(f.data) / testBS)
	m := &filemap.Map{BlockSize: testBS, Pages: pages}
	const slotPages = blob.SlotSize / testBS
	var slots []blob.ID // by window; zero for an all-zero slot
	for p := uint32(0); p < pages; p += slotPages {
		n := min(slotPages, pages-p)
		id := add(t, ctx, w, blob.KindSlot, base[int(p)*testBS:int(p+n)*testBS])
		slots = append(slots, id)
		if n == slotPages && id.IsZero() {
			m.Extents = append(m.Extents, filemap.Extent{Page: p, Count: n})
		} else {
			m.Extents = append(m.Extents, filemap.Extent{Page: p, Count: n, Blob: id})
		}
	}
	if len(f.patched) > 0 {
		var patch []byte
		var ups []filemap.Extent
		for i, pg := range f.patched {
			page := bytes.Clone(f.data[int(pg)*testBS : int(pg+1)*testBS])
			u := filemap.Extent{Page: pg, Count: 1, BlobPage: uint32(i)}
			if win := pg / slotPages; f.delta && !slots[win].IsZero() {
				for k := range page {
					page[k] ^= base[int(pg)*testBS+k]
				}
				u.Base, u.BasePage = slots[win], pg-win*slotPages
			}
			patch = append(patch, page...)
			ups = append(ups, u)
		}
		var id blob.ID
		if f.oldPatch {
			id = add(t, ctx, w, blob.KindPatch, patch)
		} else {
			id = add(t, ctx, w, blob.KindPatchRuns, filemap.AppendPatchRuns(nil, testBS, patch))
		}
		for i := range ups {
			ups[i].Blob = id
		}
		var err error
		if m, err = filemap.Overlay(m, pages, ups); err != nil {
			t.Fatal(err)
		}
		if f.delta && !m.HasDeltas() {
			t.Fatal("a delta relation whose map has no deltas")
		}
		// Sums of the windows holding patch pages, as a backup records
		// them: a slot blob's ID is the sum (the blob itself is unused).
		for _, pg := range f.patched {
			win := pg / slotPages
			if f.noSums || len(m.Sums) > 0 && m.Sums[len(m.Sums)-1].Slot == win {
				continue
			}
			p0, p1 := win*slotPages, min((win+1)*slotPages, pages)
			m.Sums = append(m.Sums, filemap.SlotSum{Slot: win, ID: add(t, ctx, w, blob.KindSlot, f.data[int(p0)*testBS:int(p1)*testBS])})
		}
	}
	b, err := filemap.EncodeMap(m)
	if err != nil {
		t.Fatal(err)
	}
	return add(t, ctx, w, blob.KindFileMap, b)
}

// snapSpec describes a hand-built snapshot.
type snapSpec struct {
	files       map[string]tfile
	tablespaces map[uint32]map[string]tfile // by OID, paths inside the location
	tsPaths     map[uint32]string
	start, stop pg.LSN
	tli         pg.TimelineID
	stopTime    time.Time
}

// commitSnapshot stores a snapshot built from spec and returns it.
func commitSnapshot(t testing.TB, r *repo.Repo, spec snapSpec) *repo.Snapshot {
	t.Helper()
	ctx := context.Background()
	w, err := r.NewWriter(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	files := map[string]tfile{}
	for k, v := range spec.files {
		files[k] = v
	}
	if _, ok := files[controlPath]; !ok {
		files[controlPath] = tfile{data: fixture(t, "pg_control")}
	}
	if _, ok := files["PG_VERSION"]; !ok {
		files["PG_VERSION"] = tfile{data: []byte("15\n")}
	}
	for _, d := range []string{"pg_wal", "pg_tblspc"} {
		if _, ok := files[d]; !ok {
			files[d] = tfile{dir: true}
		}
	}
	s := &repo.Snapshot{
		Cluster: testSysID(t), PGVersion: 150018, BlockSize: testBS, WALSegmentSize: testSegSize,
		DataChecksums: true, Type: repo.SnapshotFull,
		StartLSN: uint64(spec.start), StopLSN: uint64(spec.stop),
		StartTimeline: uint32(max(1, spec.tli)), StopTimeline: uint32(max(1, spec.tli)),
		StartTime: spec.stopTime.Add(-time.Second), StopTime: spec.stopTime,
		BackupLabel: fixture(t, "backup_label"),
	}
	var oids []uint32
	for oid := range spec.tablespaces {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	var tsRoots []blob.ID
	var tsmap []pg.TablespaceMapEntry
	for _, oid := range oids {
		loc := spec.tsPaths[oid]
		files[fmt.Sprintf("pg_tblspc/%d", oid)] = tfile{link: loc}
		s.Tablespaces = append(s.Tablespaces, repo.Tablespace{OID: oid, Path: loc})
		tsRoots = append(tsRoots, buildTree(t, ctx, w, spec.tablespaces[oid]))
		tsmap = append(tsmap, pg.TablespaceMapEntry{OID: oid, Path: loc})
	}
	if len(tsmap) > 0 {
		s.TablespaceMap = pg.EncodeTablespaceMap(tsmap)
	}
	s.Roots = append([]blob.ID{buildTree(t, ctx, w, files)}, tsRoots...)
	if _, err := w.Commit(ctx, s, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeArchive is an in-memory WAL archive.
type fakeArchive struct {
	mu    sync.Mutex
	hists []pg.History
	segs  map[pg.TimelineID]map[pg.SegNo][]byte // nil content: a segment with no commit
	reads int
}

func newArchive() *fakeArchive {
	return &fakeArchive{segs: map[pg.TimelineID]map[pg.SegNo][]byte{}}
}

func (a *fakeArchive) addRange(tli pg.TimelineID, from, to pg.SegNo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.segs[tli] == nil {
		a.segs[tli] = map[pg.SegNo][]byte{}
	}
	for s := from; s <= to; s++ {
		if _, ok := a.segs[tli][s]; !ok {
			a.segs[tli][s] = nil
		}
	}
}

func (a *fakeArchive) put(tli pg.TimelineID, seg pg.SegNo, data []byte) {
	a.addRange(tli, seg, seg)
	a.mu.Lock()
	a.segs[tli][seg] = data
	a.mu.Unlock()
}

func (a *fakeArchive) Histories(ctx context.Context, cluster uint64) ([]pg.History, error) {
	return a.hists, nil
}

func (a *fakeArchive) Segments(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) ([]pg.SegNo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []pg.SegNo
	for s := range a.segs[tli] {
		if s >= from {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (a *fakeArchive) ReadSegment(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reads++
	data, ok := a.segs[tli][seg]
	if !ok {
		return nil, fmt.Errorf("segment %s: not found", pg.SegmentName(tli, seg, testSegSize))
	}
	if data == nil {
		data = walSegment(tli, seg, 0, nil)
	}
	return data, nil
}

// walSegment builds a valid 1 MiB WAL segment with one commit record per
// time.
func walSegment(tli pg.TimelineID, seg pg.SegNo, sysid uint64, commits []time.Time) []byte {
	return pgtest.Segment(tli, seg, testSegSize, sysid, commits)
}

// readTree returns every regular file and symlink below dir, by slash path.
func readTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = string(b)
		case d.IsDir() && rel != ".":
			out[rel+"/"] = ""
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
