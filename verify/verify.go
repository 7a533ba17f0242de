// Package verify checks a tidemark repository and says exactly what it
// checked: that every snapshot resolves to blobs the index knows, in packs
// that exist with the sizes the index records; that the archived WAL lets
// every snapshot become consistent and reach the archive head on every
// timeline it leads to, and where it does not (the gaps, by segment name,
// and the snapshots they break); that the timeline history files agree
// with each other and with the timelines archived; and, when asked, that
// the packs' contents are intact (every chunk authenticated, trailers equal
// to the index, every blob's keyed ID recomputed), all of them or a rotating
// share per run that remembers what it already read; and, with the packs,
// the archived WAL's contents (every object decrypted, authenticated and
// decompressed, every segment's page headers checked against its name and
// the cluster), naming for a damaged object the snapshots and the ranges of
// recovery targets it takes away.
//
// It reads. The only objects it writes are its shared lease while it runs
// (garbage collection waits for it) and, with a rotating share, its
// progress record verify/state. It is not a restore drill (verify/drill
// starts PostgreSQL on a restored copy and replays the WAL).
package verify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/repo/refs"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// Repository is what verify reads. *repo.Repo has it.
type Repository interface {
	refs.Reader
	Store() storage.Store
	LoadSnapshot(ctx context.Context, cluster uint64, id string) (*repo.Snapshot, error)
	IndexFiles(ctx context.Context) ([]*index.File, error)
	ReloadIndex(ctx context.Context) error
	ReadPack(ctx context.Context, p index.Pack, fn func(e pack.Entry, plain []byte) error) ([]pack.Entry, error)
	AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error)
	Encrypt(dst io.Writer) (io.WriteCloser, error)
	Decrypt(src io.Reader) (io.Reader, error)
}

// Archive is what verify reads of the WAL archive. *walarchive.Archive has
// it.
type Archive interface {
	Clusters(ctx context.Context) ([]uint64, error)
	List(ctx context.Context, cluster uint64) (*walarchive.Listing, error)
	History(ctx context.Context, cluster uint64, tli pg.TimelineID) (pg.History, error)
	Expired(ctx context.Context, cluster uint64) (walarchive.Ranges, error)
	// Decode checks one archived object's bytes, read from body, and
	// writes the file they hold to w (see walarchive.Archive.Decode).
	Decode(ctx context.Context, key string, body io.Reader, name string, cluster uint64, w io.Writer) (walarchive.Meta, error)
	// ReadSummary and GetPiece read a block summary and a piece of a
	// segment, authenticated (see walarchive.Archive).
	ReadSummary(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32) (*walarchive.Summary, error)
	GetPiece(ctx context.Context, cluster uint64, p walarchive.Piece, w io.Writer) (walarchive.Meta, error)
}

// Options configure a verification.
type Options struct {
	// ReadData downloads and checks every pack and every archived WAL
	// object.
	ReadData bool
	// Subset, between 0 and 1, downloads and checks that share of the
	// packs and of the WAL archive's objects, the next share of the
	// rotations recorded in verify/state.
	Subset float64
	// Parallel is the number of packs, and of WAL objects, read at once
	// (default 4).
	Parallel int
	// Progress, when set, counts the bytes of packs read (phase "read
	// packs").
	Progress *progress.Counter
	Logger   *slog.Logger
	Now      func() time.Time
}

// Report is what a verification checked and found.
type Report struct {
	Store    string    `json:"repository"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Checked says, one line per check, exactly what was checked and so
	// what a clean result proves; NotChecked what was not.
	Checked    []string   `json:"checked"`
	NotChecked []string   `json:"not_checked"`
	Problems   []*Problem `json:"problems"`
	// Notes are findings that break nothing (WAL expired on purpose,
	// packs waiting for garbage collection).
	Notes []string `json:"notes,omitempty"`
	Stats Stats    `json:"stats"`
	// ReadPacks are the packs read with ReadData or Subset.
	ReadPacks []string `json:"read_packs,omitempty"`
	Subset    *Share   `json:"subset,omitempty"`
	// WAL is what was read of the WAL archive with ReadData or Subset.
	WAL *WALShare `json:"wal_read,omitempty"`
}

// Stats count what was looked at.
type Stats struct {
	Snapshots     int   `json:"snapshots"`
	Clusters      int   `json:"clusters"`
	MetaBlobs     int   `json:"meta_blobs"`
	DataBlobs     int   `json:"data_blobs"`
	Packs         int   `json:"packs"`
	PackBytes     int64 `json:"pack_bytes"`
	IndexedPacks  int   `json:"indexed_packs"`
	WALSegments   int64 `json:"wal_segments"`
	Timelines     int   `json:"timelines"`
	PacksRead     int   `json:"packs_read"`
	BytesRead     int64 `json:"bytes_read"`
	BlobsRehashed int64 `json:"blobs_rehashed"`
	// WAL objects read (segments, .partial and .backup files: history
	// files are read by every run), their plaintext and stored bytes, and
	// the requests that took (GETs, and LISTs of up to 1000 keys).
	WALObjectsRead  int64 `json:"wal_objects_read"`
	WALBytesRead    int64 `json:"wal_bytes_read"`
	WALStoredRead   int64 `json:"wal_stored_bytes_read"`
	WALPagesChecked int64 `json:"wal_pages_checked"`
	WALRequests     int64 `json:"wal_requests"`
	// WALReadSeconds is how long reading the WAL took.
	WALReadSeconds float64 `json:"wal_read_seconds"`
	// RepositoryBytes is the size of every object listed (packs, WAL,
	// index, snapshots).
	RepositoryBytes int64 `json:"repository_bytes"`
}

// Problem is one thing found wrong, named by the object it concerns.
type Problem struct {
	Kind    string `json:"kind"` // snapshot, metadata, blob, pack, pack-data, history, wal, wal-data
	Object  string `json:"object"`
	Message string `json:"message"`
	// Snapshots are the snapshots it breaks (object keys).
	Snapshots []string `json:"snapshots,omitempty"`
	// Lost are the recovery targets it takes away (wal-data): times no
	// snapshot can be recovered to any more.
	Lost []LostRange `json:"lost_targets,omitempty"`
}

// LostRange is a span of recovery target times on one timeline that no
// snapshot reaches any more: from From (inclusive; zero when unknown) to To
// (exclusive, the stop of the next snapshot that starts after the damage;
// zero: every later time, up to the archive head).
type LostRange struct {
	Timeline uint32    `json:"timeline"`
	From     time.Time `json:"from,omitzero"`
	To       time.Time `json:"to,omitzero"`
	// FromBasis says where From comes from: "last commit" (the last
	// commit archived before the damaged segment) or "snapshot stop" (no
	// commit was found; the newest snapshot's stop before it).
	FromBasis string `json:"from_basis,omitempty"`
}

func (r LostRange) String() string {
	from, to := "an unknown time", "the archive head"
	if !r.From.IsZero() {
		from = r.From.UTC().Format(time.RFC3339)
	}
	if !r.To.IsZero() {
		to = r.To.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("timeline %d from %s to %s", r.Timeline, from, to)
}

func (p *Problem) String() string {
	s := p.Object + ": " + p.Message
	if n := len(p.Snapshots); n > 0 {
		s += fmt.Sprintf(" (breaks %d snapshot(s): %s", n, strings.Join(p.Snapshots[:min(n, 3)], ", "))
		if n > 3 {
			s += ", ..."
		}
		s += ")"
	}
	return s
}

// OK reports whether nothing was found wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// ErrProblems is matched by *ProblemsError.
var ErrProblems = errors.New("verify found problems")

// ProblemsError is returned by Run when it found problems: one line naming
// the first bad object.
type ProblemsError struct{ Report *Report }

func (e *ProblemsError) Error() string {
	p := e.Report.Problems[0]
	return fmt.Sprintf("verify found %d problem(s); the first: %s; see the report above (tidemark verify --json for all)", len(e.Report.Problems), p)
}

func (e *ProblemsError) Is(target error) bool {
	return target == ErrProblems || target == repo.ErrCorrupt
}

// run is the state of one verification.
type run struct {
	r    Repository
	a    Archive
	o    Options
	log  *slog.Logger
	rep  *Report
	mu   sync.Mutex
	prob map[string]*Problem // by kind and object

	snaps   []*repo.Snapshot
	objects map[pack.ID]storage.ObjectInfo
	g       *refs.Graph
	wal     map[uint64]*clusterWAL // what checkWAL found, for readWAL
}

// Run verifies the repository. It returns the report and, when it found
// problems, a *ProblemsError; other errors mean it could not finish (the
// store unreachable), not that the repository is damaged.
func Run(ctx context.Context, r Repository, a Archive, opts Options) (*Report, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	v := &run{r: r, a: a, o: opts, log: opts.Logger, prob: map[string]*Problem{}, wal: map[uint64]*clusterWAL{},
		rep: &Report{Store: r.Store().String(), Started: opts.Now().UTC()}}
	l, err := r.AcquireLease(ctx, lease.ScopeVerify, lease.Options{Command: "verify", Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("take the verify lease: %w", err)
	}
	defer l.Release(context.WithoutCancel(ctx))
	if err := v.run(ctx); err != nil {
		return v.rep, err
	}
	v.rep.Finished = opts.Now().UTC()
	slices.SortStableFunc(v.rep.Problems, func(a, b *Problem) int {
		return cmp.Or(cmp.Compare(kindOrder(a.Kind), kindOrder(b.Kind)), strings.Compare(a.Object, b.Object))
	})
	if len(v.rep.Problems) > 0 {
		return v.rep, &ProblemsError{Report: v.rep}
	}
	return v.rep, nil
}

func kindOrder(k string) int {
	return slices.Index([]string{"snapshot", "metadata", "blob", "pack", "pack-data", "history", "wal", "wal-data"}, k)
}

// problem records a problem (once per kind and object) and the snapshot it
// breaks.
func (v *run) problem(kind, object, msg, snapshot string) *Problem {
	v.mu.Lock()
	defer v.mu.Unlock()
	k := kind + " " + object
	p := v.prob[k]
	if p == nil {
		p = &Problem{Kind: kind, Object: object, Message: msg}
		v.prob[k] = p
		v.rep.Problems = append(v.rep.Problems, p)
	}
	if snapshot != "" && !slices.Contains(p.Snapshots, snapshot) {
		p.Snapshots = append(p.Snapshots, snapshot)
	}
	return p
}

func (v *run) checked(format string, args ...any) {
	v.rep.Checked = append(v.rep.Checked, fmt.Sprintf(format, args...))
}

func (v *run) run(ctx context.Context) error {
	if err := v.loadSnapshots(ctx); err != nil {
		return err
	}
	if err := v.listPacks(ctx); err != nil {
		return err
	}
	if err := v.resolve(ctx); err != nil {
		return err
	}
	if err := v.checkWAL(ctx); err != nil {
		return err
	}
	if v.o.ReadData || v.o.Subset > 0 {
		var st *state
		if v.o.Subset > 0 && v.o.Subset < 1 {
			var err error
			if st, err = v.loadState(ctx); err != nil {
				return err
			}
		}
		if err := v.readData(ctx, st); err != nil {
			return err
		}
		walDone, err := v.readWAL(ctx, st)
		if err != nil {
			return err
		}
		if st != nil {
			if err := v.saveState(ctx, st, walDone); err != nil {
				return err
			}
		}
	} else {
		v.rep.NotChecked = append(v.rep.NotChecked,
			"pack contents: packs were listed, not downloaded; --read-data (or --read-data-subset N%) decrypts them and recomputes every blob's ID",
			"WAL contents: segments were listed, not read; --read-data (or --read-data-subset N%) decrypts and authenticates them and checks every page header (wal-fetch authenticates each one it delivers; tidemark drill replays them)")
	}
	v.rep.NotChecked = append(v.rep.NotChecked,
		"that PostgreSQL starts on a restore and the data is consistent: that is tidemark drill")
	return nil
}

// loadSnapshots lists and reads every snapshot, one by one, so that an
// unreadable one is reported rather than ending the run.
func (v *run) loadSnapshots(ctx context.Context) error {
	var keys []string
	for oi, err := range v.r.Store().List(ctx, repo.SnapshotPrefix, "") {
		if err != nil {
			return fmt.Errorf("list %s: %w", repo.SnapshotPrefix, err)
		}
		v.rep.Stats.RepositoryBytes += oi.Size
		if strings.Count(strings.TrimPrefix(oi.Key, repo.SnapshotPrefix), "/") == 1 {
			keys = append(keys, oi.Key)
		}
	}
	out := make([]*repo.Snapshot, len(keys))
	errs := make([]error, len(keys))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, k := range keys {
		rest := strings.TrimPrefix(k, repo.SnapshotPrefix)
		cs, id, _ := strings.Cut(rest, "/")
		cluster, err := strconv.ParseUint(cs, 10, 64)
		if err != nil {
			errs[i] = fmt.Errorf("not a snapshot key: %w", repo.ErrCorrupt)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = v.r.LoadSnapshot(ctx, cluster, id)
		}()
	}
	wg.Wait()
	clusters := map[uint64]bool{}
	for i, err := range errs {
		switch {
		case errors.Is(err, storage.ErrNotFound):
			continue // removed meanwhile (expire)
		case err != nil && !errors.Is(err, repo.ErrCorrupt) && !errors.Is(err, repo.ErrUnsupportedVersion):
			return err
		case err != nil:
			v.problem("snapshot", keys[i], fmt.Sprintf("unreadable: %v", err), keys[i])
			continue
		}
		v.snaps = append(v.snaps, out[i])
		clusters[out[i].Cluster] = true
	}
	slices.SortFunc(v.snaps, func(a, b *repo.Snapshot) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), a.StopTime.Compare(b.StopTime), cmp.Compare(a.StopLSN, b.StopLSN))
	})
	v.rep.Stats.Snapshots = len(v.snaps)
	v.rep.Stats.Clusters = len(clusters)
	v.checked("snapshots: %d snapshot objects of %d cluster(s) listed; %d decrypt, authenticate and decode", len(keys), len(clusters), len(v.snaps))
	return nil
}

// listPacks lists data/ and meta/ once: the sizes the resolution check
// compares with the index, without a HEAD per pack.
func (v *run) listPacks(ctx context.Context) error {
	v.objects = map[pack.ID]storage.ObjectInfo{}
	for _, class := range []blob.Class{blob.ClassData, blob.ClassMeta} {
		prefix := class.Prefix() + "/"
		for oi, err := range v.r.Store().List(ctx, prefix, "") {
			if err != nil {
				return fmt.Errorf("list %s: %w", prefix, err)
			}
			v.rep.Stats.RepositoryBytes += oi.Size
			c, id, perr := pack.ParseKey(oi.Key)
			if perr != nil || c != class {
				continue
			}
			v.objects[id] = oi
			v.rep.Stats.Packs++
			v.rep.Stats.PackBytes += oi.Size
		}
	}
	return nil
}

// nodeState is what resolve found below one metadata blob.
type nodeState struct {
	problems []*Problem
}

// resolve walks every snapshot's trees and maps and checks every blob they
// name: in the index, in a pack that exists with the size the index says.
func (v *run) resolve(ctx context.Context) error {
	v.g = refs.New(v.r, v.log)
	var roots []blob.ID
	for _, s := range v.snaps {
		roots = append(roots, s.Roots...)
	}
	if err := v.g.Load(ctx, roots); err != nil {
		return fmt.Errorf("read snapshot metadata: %w", err)
	}
	// Problems below a metadata blob, memoised: incremental snapshots share
	// almost all of their metadata.
	memo := map[blob.ID]*nodeState{}
	dataSeen := map[blob.ID]bool{}
	packsUsed := map[pack.ID]bool{}
	checkBlob := func(id blob.ID, meta bool) []*Problem {
		loc, err := v.r.Lookup(ctx, id)
		if err != nil {
			return []*Problem{v.problem("blob", id.String(), "not in the index: "+errText(err), "")}
		}
		packsUsed[loc.Pack.ID] = true
		oi, ok := v.objects[loc.Pack.ID]
		key := loc.Pack.Key()
		switch {
		case !ok:
			return []*Problem{v.problem("pack", key, "missing (the index says it holds blobs snapshots use)", "")}
		case oi.Size != loc.Pack.CipherSize():
			return []*Problem{v.problem("pack", key, fmt.Sprintf("has %d bytes, the index says %d", oi.Size, loc.Pack.CipherSize()), "")}
		}
		return nil
	}
	var visit func(id blob.ID, depth int) *nodeState
	visit = func(id blob.ID, depth int) *nodeState {
		if st := memo[id]; st != nil {
			return st
		}
		st := &nodeState{}
		memo[id] = st
		n := v.g.Node(id)
		switch {
		case n == nil:
			st.problems = append(st.problems, v.problem("metadata", id.String(), "not read", ""))
			return st
		case n.Err != nil:
			st.problems = append(st.problems, v.problem("metadata", id.String(), fmt.Sprintf("%s blob unreadable: %s", n.Kind, errText(n.Err)), ""))
			return st
		}
		st.problems = append(st.problems, checkBlob(id, true)...)
		for _, d := range n.Data {
			if !dataSeen[d] {
				dataSeen[d] = true
			}
			st.problems = append(st.problems, checkBlob(d, false)...)
		}
		for _, c := range slices.Concat(n.Trees, n.Maps) {
			if depth > 200 {
				break
			}
			st.problems = append(st.problems, visit(c, depth+1).problems...)
		}
		st.problems = dedupe(st.problems)
		return st
	}
	broken := 0
	for _, s := range v.snaps {
		key := repo.SnapshotKey(s.Cluster, s.ID)
		var ps []*Problem
		for _, root := range s.Roots {
			ps = append(ps, visit(root, 0).problems...)
		}
		for _, p := range dedupe(ps) {
			v.problem(p.Kind, p.Object, p.Message, key)
		}
		if len(ps) > 0 {
			broken++
		}
	}
	v.rep.Stats.MetaBlobs = v.g.Len()
	v.rep.Stats.DataBlobs = len(dataSeen)
	v.checked("resolution: %d snapshot(s) walked: %d tree and page-map blobs read, decoded and their keyed IDs recomputed; they name %d data blobs; every blob looked up in the index and its pack found in one listing of data/ and meta/ (%d packs, %s) with the size the index records; %d snapshot(s) do not resolve",
		len(v.snaps), v.g.Len(), len(dataSeen), v.rep.Stats.Packs, bytesize.Format(v.rep.Stats.PackBytes), broken)
	unused := 0
	for id := range v.objects {
		if !packsUsed[id] {
			unused++
		}
	}
	if unused > 0 {
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%d pack(s) hold no blob any snapshot uses (deleted snapshots, interrupted backups, or a backup running now): tidemark gc removes them", unused))
	}
	return nil
}

func dedupe(ps []*Problem) []*Problem {
	slices.SortFunc(ps, func(a, b *Problem) int { return strings.Compare(a.Kind+a.Object, b.Kind+b.Object) })
	return slices.CompactFunc(ps, func(a, b *Problem) bool { return a == b })
}

func errText(err error) string {
	var ce *repo.CorruptError
	if errors.As(err, &ce) {
		return ce.Err.Error() + " (" + ce.Key + ")"
	}
	var we *walarchive.CorruptError
	if errors.As(err, &we) {
		return we.Reason // the problem names the object
	}
	return err.Error()
}
