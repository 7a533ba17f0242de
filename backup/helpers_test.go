package backup

import (
	"bytes"
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/repo/walarchive/walarchivetest"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fs"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TIDEMARK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// testWriter sends log lines to t.Log, so they show only for failed tests.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// testRepo is a repository on a local directory with small packs, so that
// little data still makes several packs and index deltas.
type testRepo struct {
	*repo.Repo
	store storage.Store
	dir   string
	id    *age.X25519Identity
}

func newTestRepo(t testing.TB, packSize int64) *testRepo {
	t.Helper()
	dir := t.TempDir()
	st, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return initTestRepo(t, st, dir, packSize)
}

func initTestRepo(t testing.TB, st storage.Store, dir string, packSize int64) *testRepo {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "test")
	if err != nil {
		t.Fatal(err)
	}
	opts := repo.InitOptions{Key: spec, PackSize: packSize}
	opts.Logger = testLogger(t)
	opts.IndexEveryPacks = 2 // interrupted tests leave indexed uploads behind
	r, _, err := repo.Init(t.Context(), st, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &testRepo{Repo: r, store: st, dir: dir, id: id}
}

// walArchive is a WAL archive made by a plain cp archive_command, which
// restores read back with cp. Whatever the command copied is pushed, when
// a backup asks, through the archive step every tidemark archiver shares
// (walarchive.PutFrom) into arch, which so holds the segments and their
// block summaries.
type walArchive struct {
	dir     string
	arch    *walarchive.Archive
	mu      sync.Mutex
	pushed  map[string]bool
	cluster uint64
}

func newWALArchive(t testing.TB) *walArchive {
	dir := filepath.Join(testenv.SharedDir(t), "wal")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, dir)
	st, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, _ := walarchivetest.Repo(t, st)
	return &walArchive{dir: dir, arch: walarchive.FromRepo(r, walarchive.Options{}), pushed: map[string]bool{}}
}

// sync pushes the segments the archive_command copied since the last call.
func (a *walArchive) sync(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ents, err := os.ReadDir(a.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		f, err := pg.ParseWALFileName(e.Name())
		if err != nil || f.Kind != pg.WALSegment || a.pushed[e.Name()] {
			continue
		}
		b, err := os.ReadFile(filepath.Join(a.dir, e.Name()))
		if err != nil {
			return err
		}
		h, err := pg.ParseSegmentHeader(b)
		if err != nil {
			return err
		}
		ci := walarchive.ClusterInfo{SystemID: h.SysID, SegSize: h.SegSize, BlockSize: h.BlockSize}
		a.cluster = h.SysID
		if _, err := a.arch.Put(ctx, ci, e.Name(), b); err != nil {
			return err
		}
		a.pushed[e.Name()] = true
	}
	return nil
}

// ReadSummary makes walArchive a source of block summaries.
func (a *walArchive) ReadSummary(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32) (*walarchive.Summary, error) {
	if err := a.sync(ctx); err != nil {
		return nil, err
	}
	return a.arch.ReadSummary(ctx, cluster, tli, seg, segSize)
}

// archiveCommand copies under a temporary name and renames, so that sync
// (called by a backup reading summaries while the server archives) never
// reads a segment half copied.
func (a *walArchive) archiveCommand() string {
	return fmt.Sprintf("test ! -f %[1]s/%%f && cp %%p %[1]s/%%f.tmp && mv %[1]s/%%f.tmp %[1]s/%%f", a.dir)
}

func (a *walArchive) restoreCommand() string {
	return fmt.Sprintf("cp %s/%%f %%p", a.dir)
}

// CheckRange makes walArchive a WALArchive: the segments from start to
// stop that are not in the directory.
func (a *walArchive) CheckRange(_ context.Context, _ uint64, h pg.History, start, stop pg.LSN) ([]string, error) {
	const segSize = 16 << 20
	var missing []string
	for seg := start.Segment(segSize); seg <= stop.PrevSegment(segSize); seg++ {
		name := pg.SegmentName(h.SegmentTimeline(seg, segSize), seg, segSize)
		if _, err := os.Stat(filepath.Join(a.dir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	return missing, nil
}

// newCluster starts a cluster that archives to a fresh walArchive.
func newCluster(t testing.TB, version int, settings map[string]string) (*testenv.Cluster, *walArchive) {
	t.Helper()
	a := newWALArchive(t)
	s := map[string]string{"archive_mode": "on", "archive_command": a.archiveCommand()}
	for k, v := range settings {
		s[k] = v
	}
	return testenv.NewCluster(t, testenv.PGConfig{Version: version, Settings: s}), a
}

// newClusterChecksums is newCluster with data checksums on or off.
func newClusterChecksums(t testing.TB, version int, settings map[string]string, checksums bool) (*testenv.Cluster, *walArchive) {
	t.Helper()
	a := newWALArchive(t)
	s := map[string]string{"archive_mode": "on", "archive_command": a.archiveCommand()}
	for k, v := range settings {
		s[k] = v
	}
	return testenv.NewCluster(t, testenv.PGConfig{Version: version, Settings: s, DataChecksums: &checksums}), a
}

// damageSummary deletes ("deleted") or corrupts ("corrupted") the block
// summary of the archived segment holding lsn and returns its segment's
// name.
func (a *walArchive) damageSummary(t testing.TB, lsn pg.LSN, how string) string {
	t.Helper()
	ctx := t.Context()
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name := range a.pushed {
		f, _ := pg.ParseWALFileName(name)
		seg, _ := f.SegNo(16 << 20)
		if seg != lsn.Segment(16<<20) {
			continue
		}
		cluster := a.cluster
		key := walarchive.SummaryKey(cluster, f.Timeline, seg, 16<<20)
		st := a.arch.Store()
		switch how {
		case "deleted":
			if err := st.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		default:
			rc, err := st.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-20] ^= 0x40
			if err := st.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
				t.Fatal(err)
			}
		}
		return name
	}
	t.Fatalf("no archived segment holds %s", lsn)
	return ""
}

// backupOpts are the options tests back up with.
func backupOpts(t testing.TB, c *testenv.Cluster, a *walArchive) Options {
	return Options{PGData: c.DataDir, ConnString: c.ConnString(), WAL: a, Logger: testLogger(t), Parallel: 3}
}

func mustBackup(t testing.TB, r *testRepo, opts Options) *Result {
	t.Helper()
	res, err := Run(t.Context(), r.Repo, opts)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	t.Logf("backup %s: %s (%s) parent %s, %d files, logical %s, read %s, stored %s, patched pages %d (deltas %d, base slots read %s), rebased slots %d, reused files %d",
		res.Snapshot.ID, res.Snapshot.Type, res.Method, res.Snapshot.Parent, res.Stats.Files, bytesize.Format(res.Stats.LogicalBytes),
		bytesize.Format(res.Stats.ReadBytes), bytesize.Format(res.Stats.NewBytes), res.Stats.PatchedPages, res.Stats.DeltaPages, bytesize.Format(res.Stats.BaseReadBytes), res.Stats.RebasedSlots, res.Stats.ReusedFiles)
	return res
}

// materialize writes a snapshot's files: PGDATA to dest, tablespace i to
// spcDests[i]. It is a small stand-in for the restore engine, written from
// docs/snapshot.md, so that the format is exercised by a second reader.
func materialize(t testing.TB, r *repo.Repo, s *repo.Snapshot, dest string, spcDests []string) {
	t.Helper()
	ctx := t.Context()
	m := &materializer{r: r, bs: s.BlockSize}
	if err := os.MkdirAll(dest, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.tree(ctx, s.Roots[0], dest, ""); err != nil {
		t.Fatal(err)
	}
	for i, d := range spcDests {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := m.tree(ctx, s.Roots[i+1], d, fmt.Sprintf("pg_tblspc/%d", s.Tablespaces[i].OID)); err != nil {
			t.Fatal(err)
		}
	}
}

type materializer struct {
	r  *repo.Repo
	bs int
}

func (m *materializer) tree(ctx context.Context, id blob.ID, dir, rel string) error {
	b, err := m.r.ReadBlob(ctx, id, nil)
	if err != nil {
		return err
	}
	tr, err := filemap.DecodeTree(b)
	if err != nil {
		return err
	}
	for _, p := range tr.Parts {
		// A big directory's parts: the same directory.
		if err := m.tree(ctx, p.ID, dir, rel); err != nil {
			return err
		}
	}
	for _, n := range tr.Nodes {
		p := filepath.Join(dir, n.Name)
		r := n.Name
		if rel != "" {
			r = rel + "/" + n.Name
		}
		switch n.Type {
		case filemap.TypeDir:
			if err := os.Mkdir(p, 0o700); err != nil {
				return err
			}
			if err := m.tree(ctx, n.Subtree, p, r); err != nil {
				return err
			}
		case filemap.TypeSymlink:
			if _, ok := pg.ParseTablespaceLink(r); ok {
				continue // tablespace_map makes it
			}
			if err := os.Symlink(n.Target, p); err != nil {
				return err
			}
		case filemap.TypeFile:
			if err := m.file(ctx, &n, p); err != nil {
				return fmt.Errorf("%s: %w", r, err)
			}
		}
	}
	return nil
}

func (m *materializer) file(ctx context.Context, n *filemap.Node, p string) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if n.Map.IsZero() {
		for _, id := range n.Content {
			b, err := m.r.ReadBlob(ctx, id, nil)
			if err != nil {
				return err
			}
			if _, err := f.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	mb, err := m.r.ReadBlob(ctx, n.Map, nil)
	if err != nil {
		return err
	}
	fm, err := filemap.DecodeMap(mb)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(fm.Pages) * int64(fm.BlockSize)); err != nil {
		return err
	}
	cache := map[blob.ID][]byte{}
	read := func(id blob.ID) ([]byte, error) {
		if data, ok := cache[id]; ok {
			return data, nil
		}
		data, err := m.r.ReadBlob(ctx, id, nil)
		if err != nil {
			return nil, err
		}
		loc, err := m.r.Lookup(ctx, id)
		if err != nil {
			return nil, err
		}
		if loc.Kind == blob.KindPatchRuns {
			if data, err = filemap.ExpandPatch(nil, data); err != nil {
				return nil, err
			}
		}
		cache[id] = data
		return data, nil
	}
	bs := int64(fm.BlockSize)
	for _, e := range fm.Extents {
		if e.Blob.IsZero() {
			continue
		}
		data, err := read(e.Blob)
		if err != nil {
			return err
		}
		src := slices.Clone(data[int64(e.BlobPage)*bs : int64(e.BlobPage+e.Count)*bs])
		if e.IsDelta() {
			base, err := read(e.Base)
			if err != nil {
				return err
			}
			subtle.XORBytes(src, src, base[int64(e.BasePage)*bs:int64(e.BasePage+e.Count)*bs])
		}
		if _, err := f.WriteAt(src, int64(e.Page)*bs); err != nil {
			return err
		}
	}
	return nil
}

// restoreSnapshot materialises s into new directories, writes backup_label,
// tablespace_map (moved to the new tablespace directories) and recovery
// settings, starts PostgreSQL on it, waits for recovery to end and returns
// the running cluster. toEnd replays all the archived WAL; otherwise
// recovery stops as soon as the backup is consistent (its stop LSN).
func restoreSnapshot(t testing.TB, r *repo.Repo, s *repo.Snapshot, a *walArchive, version int, toEnd bool) *testenv.Cluster {
	t.Helper()
	var settings map[string]string
	if !toEnd {
		settings = map[string]string{"recovery_target": "immediate", "recovery_target_action": "promote"}
	}
	return restoreWith(t, r, s, a, version, settings)
}

// restoreWith is restoreSnapshot with recovery settings of the caller's:
// they override the defaults (archive_mode off, restore_command from a).
func restoreWith(t testing.TB, r *repo.Repo, s *repo.Snapshot, a *walArchive, version int, extra map[string]string) *testenv.Cluster {
	t.Helper()
	base := testenv.SharedDir(t)
	dest := filepath.Join(base, "data")
	var spcDests []string
	var entries []pg.TablespaceMapEntry
	for _, ts := range s.Tablespaces {
		d := filepath.Join(base, "ts"+strconv.FormatUint(uint64(ts.OID), 10))
		spcDests = append(spcDests, d)
		entries = append(entries, pg.TablespaceMapEntry{OID: ts.OID, Path: d})
	}
	materialize(t, r, s, dest, spcDests)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dest, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("backup_label", s.BackupLabel)
	if len(s.TablespaceMap) > 0 {
		write("tablespace_map", pg.EncodeTablespaceMap(entries))
	}
	write("recovery.signal", nil)
	for _, d := range spcDests {
		testenv.ChownToServer(t, d)
	}
	settings := map[string]string{
		"restore_command": a.restoreCommand(),
		"archive_mode":    "off",
	}
	for k, v := range extra {
		settings[k] = v
	}
	c := testenv.AdoptDataDir(t, version, dest, testenv.PGConfig{Settings: settings})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := c.WaitRecoveryDone(ctx); err != nil {
		t.Fatalf("recovery of snapshot %s: %v\n%s", s.ID, err, c.LogTail(30))
	}
	return c
}

func itoa(i int) string { return strconv.Itoa(i) }
