package verify

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

const (
	cluster = 7000000000000000001
	segSize = 16 << 20
)

// archive is a WAL archive listing made up by the test.
type archive struct {
	l     *walarchive.Listing
	hists map[pg.TimelineID]pg.History
	// wal, when set, keeps the record of expired WAL.
	wal *walarchive.Archive
}

func (a *archive) Clusters(context.Context) ([]uint64, error) { return []uint64{cluster}, nil }
func (a *archive) List(context.Context, uint64) (*walarchive.Listing, error) {
	return a.l, nil
}
func (a *archive) History(_ context.Context, _ uint64, tli pg.TimelineID) (pg.History, error) {
	return a.hists[tli], nil
}
func (a *archive) Expired(ctx context.Context, cluster uint64) (walarchive.Ranges, error) {
	if a.wal == nil {
		return walarchive.Ranges{}, nil
	}
	return a.wal.Expired(ctx, cluster)
}

func (a *archive) Decode(ctx context.Context, key string, body io.Reader, name string, cluster uint64, w io.Writer) (walarchive.Meta, error) {
	return walarchive.Meta{}, errors.New("the test's archive holds no objects")
}

func (a *archive) ReadSummary(context.Context, uint64, pg.TimelineID, pg.SegNo, uint32) (*walarchive.Summary, error) {
	return nil, errors.New("the test's archive holds no objects")
}

func (a *archive) GetPiece(context.Context, uint64, walarchive.Piece, io.Writer) (walarchive.Meta, error) {
	return walarchive.Meta{}, errors.New("the test's archive holds no objects")
}

// segments makes an archive holding runs of segments on timelines.
func segments(runs map[pg.TimelineID][]walarchive.SegRange, hists ...pg.History) *archive {
	a := &archive{l: &walarchive.Listing{Cluster: walarchive.ClusterInfo{SystemID: cluster, SegSize: segSize, BlockSize: 8192}},
		hists: map[pg.TimelineID]pg.History{}}
	var tls []pg.TimelineID
	for t := range runs {
		tls = append(tls, t)
	}
	slices.Sort(tls)
	for _, t := range tls {
		a.l.Timelines = append(a.l.Timelines, &walarchive.TimelineInfo{Timeline: t, Segments: runs[t]})
	}
	for _, h := range hists {
		a.hists[h.Timeline] = h
		if ti := a.l.Timeline(h.Timeline); ti != nil {
			ti.History = true
		}
	}
	return a
}

func randData(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// healthy makes a repository with three snapshots (starting in segments 2,
// 4 and 6) and an archive of segments 1..10 on timeline 1.
func healthy(t *testing.T) (*repotest.Fixture, []*repo.Snapshot, *archive) {
	f := repotest.New(t)
	var snaps []*repo.Snapshot
	for i := range 3 {
		snaps = append(snaps, repotest.Commit(t, f.Repo, repotest.Snap{Cluster: cluster, Start: time.Now().Add(time.Duration(i) * time.Minute),
			StartLSN: uint64(2*i+2)*segSize + 0x28},
			repotest.File{Name: "common", Data: make([]byte, 100<<10)},
			repotest.File{Name: "own", Data: randData(150 << 10)}))
	}
	return f, snaps, segments(map[pg.TimelineID][]walarchive.SegRange{1: {{First: 1, Last: 10}}})
}

func verifyRun(t *testing.T, f *repotest.Fixture, a Archive, o Options) (*Report, error) {
	t.Helper()
	return Run(context.Background(), f.Open(t), a, o)
}

func TestHealthy(t *testing.T) {
	f, _, a := healthy(t)
	rep, err := verifyRun(t, f, a, Options{ReadData: true})
	if err != nil {
		t.Fatalf("%v\n%v", err, rep.Problems)
	}
	if rep.Stats.Snapshots != 3 || rep.Stats.PacksRead != rep.Stats.Packs || rep.Stats.BlobsRehashed == 0 {
		t.Fatalf("stats %+v", rep.Stats)
	}
	text := strings.Join(rep.Checked, "\n")
	for _, want := range []string{"snapshots:", "resolution:", "WAL of cluster", "pack contents:"} {
		if !strings.Contains(text, want) {
			t.Errorf("report does not say it checked %q:\n%s", want, text)
		}
	}
}

func problemWith(rep *Report, kind, object string) *Problem {
	for _, p := range rep.Problems {
		if p.Kind == kind && strings.Contains(p.Object, object) {
			return p
		}
	}
	return nil
}

func TestDeletedPack(t *testing.T) {
	f, _, a := healthy(t)
	data := repotest.Keys(t, f.Store, "data/")
	victim := data[len(data)-1]
	f.Store.Delete(context.Background(), victim)
	rep, err := verifyRun(t, f, a, Options{})
	if !errors.Is(err, ErrProblems) || !errors.Is(err, repo.ErrCorrupt) {
		t.Fatalf("verify of a repository missing %s: %v", victim, err)
	}
	p := problemWith(rep, "pack", victim)
	if p == nil || len(p.Snapshots) == 0 {
		t.Fatalf("no problem names %s with its snapshots: %v", victim, rep.Problems)
	}
	if !strings.Contains(err.Error(), victim) {
		t.Errorf("the one-line summary does not name the pack: %v", err)
	}
}

func TestCorruptPack(t *testing.T) {
	f, _, a := healthy(t)
	data := repotest.Keys(t, f.Store, "data/")
	victim := data[0]
	if !f.Store.Store.(*mem.Store).Corrupt(victim, 1000) {
		t.Fatal("cannot corrupt")
	}
	// Without reading data, a flipped byte is invisible: say so.
	rep, err := verifyRun(t, f, a, Options{})
	if err != nil {
		t.Fatalf("listing-only verify: %v", err)
	}
	if !strings.Contains(strings.Join(rep.NotChecked, " "), "--read-data") {
		t.Errorf("the report does not say pack contents were not checked: %v", rep.NotChecked)
	}
	rep, err = verifyRun(t, f, a, Options{ReadData: true})
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("verify --read-data of a corrupt pack: %v", err)
	}
	if p := problemWith(rep, "pack-data", victim); p == nil || len(p.Snapshots) == 0 {
		t.Fatalf("no problem names %s: %v", victim, rep.Problems)
	}
}

func TestSubsetRotationCoversEveryPackOnce(t *testing.T) {
	f, _, a := healthy(t)
	// More packs, so that every share has some.
	for range 6 {
		repotest.Commit(t, f.Repo, repotest.Snap{Cluster: cluster, StartLSN: 8*segSize + 0x28}, repotest.File{Name: "x", Data: randData(200 << 10)})
	}
	all := append(repotest.Keys(t, f.Store, "data/"), repotest.Keys(t, f.Store, "meta/")...)
	slices.Sort(all)
	var read []string
	for i := range 4 {
		rep, err := verifyRun(t, f, a, Options{Subset: 0.25})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Subset.CycleComplete != (i == 3) {
			t.Fatalf("run %d: share %+v", i, rep.Subset)
		}
		read = append(read, rep.ReadPacks...)
	}
	slices.Sort(read)
	if strings.Join(read, " ") != strings.Join(all, " ") {
		t.Fatalf("4 runs of 25%% read %d packs (%d distinct), want each of %d once", len(read), len(slices.Compact(slices.Clone(read))), len(all))
	}
	// The fifth starts the next cycle.
	rep, err := verifyRun(t, f, a, Options{Subset: 0.25})
	if err != nil || rep.Subset.Cycle != 2 || rep.Subset.From != 0 {
		t.Fatalf("fifth run: %+v %v", rep.Subset, err)
	}
}

func TestWALGapNamesSegmentsAndSnapshots(t *testing.T) {
	f, snaps, _ := healthy(t)
	// Segment 5 lost: snapshot 3 (start 6) is fine; snapshots 1 and 2
	// cannot reach the head past it. Segment 2 lost: snapshot 1 cannot
	// become consistent.
	a := segments(map[pg.TimelineID][]walarchive.SegRange{1: {{First: 3, Last: 4}, {First: 6, Last: 10}}})
	rep, err := verifyRun(t, f, a, Options{})
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("verify with gaps: %v", err)
	}
	gap := problemWith(rep, "wal", "000000010000000000000005")
	if gap == nil || len(gap.Snapshots) != 2 || !strings.Contains(gap.Snapshots[1], snaps[1].ID) {
		t.Fatalf("gap at 5: %+v (all %v)", gap, rep.Problems)
	}
	cons := problemWith(rep, "wal", "000000010000000000000002")
	if cons == nil || !strings.Contains(cons.Message, "consistent") || !strings.Contains(cons.Snapshots[0], snaps[0].ID) {
		t.Fatalf("missing start of snapshot 1: %+v (all %v)", cons, rep.Problems)
	}
}

func TestExpiredGapIsANote(t *testing.T) {
	f, _, _ := healthy(t)
	a := segments(map[pg.TimelineID][]walarchive.SegRange{1: {{First: 2, Last: 2}, {First: 6, Last: 10}}})
	// Snapshot 2 (segment 4) would be broken: remove it as expire would.
	snaps, _ := f.Repo.Snapshots(context.Background(), 0)
	f.Store.Delete(context.Background(), repo.SnapshotKey(cluster, snaps[1].ID))
	a.wal = walarchive.New(f.Store, f.Repo, f.Repo.WALMACKey(), walarchive.Options{})
	if err := a.wal.RecordExpired(context.Background(), cluster, walarchive.Ranges{1: {{First: 3, Last: 5}}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	rep, err := verifyRun(t, f, a, Options{})
	if err != nil {
		t.Fatalf("verify with a gap expire made: %v %v", err, rep.Problems)
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "removed on purpose by tidemark expire") {
		t.Fatalf("notes: %v", rep.Notes)
	}
}

func TestMissingHistoryAfterPromotion(t *testing.T) {
	f := repotest.New(t)
	repotest.Commit(t, f.Repo, repotest.Snap{Cluster: cluster, StartLSN: 2*segSize + 0x28, Timeline: 2}, repotest.File{Name: "a", Data: []byte("x")})
	a := segments(map[pg.TimelineID][]walarchive.SegRange{1: {{First: 1, Last: 2}}, 2: {{First: 2, Last: 4}}})
	rep, err := verifyRun(t, f, a, Options{})
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("verify without 00000002.history: %v", err)
	}
	p := problemWith(rep, "history", "00000002.history")
	if p == nil || !strings.Contains(p.Message, "no history file") || len(p.Snapshots) != 1 {
		t.Fatalf("missing history: %+v (all %v)", p, rep.Problems)
	}
}

func TestHistoriesDisagree(t *testing.T) {
	f := repotest.New(t)
	repotest.Commit(t, f.Repo, repotest.Snap{Cluster: cluster, StartLSN: 2*segSize + 0x28, Timeline: 3}, repotest.File{Name: "a", Data: []byte("x")})
	h2 := pg.History{Timeline: 2, Entries: []pg.HistoryEntry{{Parent: 1, SwitchPoint: 2 * segSize}}}
	// Timeline 3 claims 2 began elsewhere.
	h3 := pg.History{Timeline: 3, Entries: []pg.HistoryEntry{{Parent: 1, SwitchPoint: 1 * segSize}, {Parent: 2, SwitchPoint: 3 * segSize}}}
	a := segments(map[pg.TimelineID][]walarchive.SegRange{1: {{First: 1, Last: 2}}, 2: {{First: 2, Last: 3}}, 3: {{First: 3, Last: 4}}}, h2, h3)
	rep, err := verifyRun(t, f, a, Options{})
	if !errors.Is(err, ErrProblems) || problemWith(rep, "history", "00000003.history") == nil {
		t.Fatalf("disagreeing histories: %v %v", err, rep.Problems)
	}
}

// TestPatchRunsThatDoNotExpand: a patch-runs blob whose keyed ID holds but
// whose runs run past their page is a problem of --read-data, named by its
// pack; a good one is not.
func TestPatchRunsThatDoNotExpand(t *testing.T) {
	f, _, a := healthy(t)
	ctx := context.Background()
	w, err := f.Repo.NewWriter(ctx, "patches")
	if err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 8192)
	copy(page[100:], "a changed tuple")
	if _, err := w.Add(ctx, blob.KindPatchRuns, filemap.AppendPatchRuns(nil, 8192, page)); err != nil {
		t.Fatal(err)
	}
	// One page of 8 KiB with a run of 2 bytes 8191 bytes in.
	bad := []byte{0x80, 0x40, 1, 4, 1, 0xff, 0x3f, 2, 'x', 'y'}
	if _, err := w.Add(ctx, blob.KindPatchRuns, bad); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := verifyRun(t, f, a, Options{ReadData: true})
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("verify --read-data of runs past their page: %v", err)
	}
	var found bool
	for _, p := range rep.Problems {
		found = found || p.Kind == "pack-data" && strings.Contains(p.Message, "a run past the page")
	}
	if !found {
		t.Fatalf("no problem says the runs do not expand: %+v", rep.Problems)
	}
}
