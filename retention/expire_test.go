package retention

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

type fakeArchive struct {
	h   map[pg.TimelineID]pg.History
	wal *walarchive.Archive // keeps the record of expired WAL
}

func (a fakeArchive) Clusters(context.Context) ([]uint64, error) { return nil, nil }
func (a fakeArchive) History(_ context.Context, _ uint64, tli pg.TimelineID) (pg.History, error) {
	return a.h[tli], nil
}
func (a fakeArchive) RecordExpired(ctx context.Context, cluster uint64, add walarchive.Ranges, now time.Time) error {
	return a.wal.RecordExpired(ctx, cluster, add, now)
}

const cluster = 7000000000000000001

// putWAL writes placeholder objects under the keys of segments first..last
// of timeline 1: expire only lists keys.
func putWAL(t *testing.T, f *repotest.Fixture, first, last pg.SegNo) {
	for s := first; s <= last; s++ {
		k, err := walarchive.Key(cluster, pg.SegmentName(1, s, segSize))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Store.Put(context.Background(), k, bytes.NewReader([]byte("x")), 1); err != nil {
			t.Fatal(err)
		}
	}
}

// putSummaries writes placeholder block summaries of segments first..last
// of timeline 1.
func putSummaries(t *testing.T, f *repotest.Fixture, first, last pg.SegNo) {
	for s := first; s <= last; s++ {
		k := walarchive.SummaryKey(cluster, 1, s, segSize)
		if err := f.Store.Put(context.Background(), k, bytes.NewReader([]byte("x")), 1); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExpireRemovesSnapshotsAndWAL(t *testing.T) {
	ctx := context.Background()
	f := repotest.New(t)
	var snaps []*repo.Snapshot
	for i := range 4 {
		snaps = append(snaps, repotest.Commit(t, f.Repo, repotest.Snap{Cluster: cluster, Start: days(i),
			StartLSN: uint64(10*i+2)*segSize + 0x28}, repotest.File{Name: "f", Data: []byte{byte(i)}}))
	}
	putWAL(t, f, 1, 40)
	// wal-receive's pieces of segments 5 and 41 (the end of timeline 1):
	// the first expires with segment 5, the second is kept.
	for _, p := range []walarchive.Piece{{Segment: pg.SegmentName(1, 5, segSize), End: 100}, {Segment: pg.SegmentName(1, 41, segSize), End: 100}} {
		if err := f.Store.Put(context.Background(), walarchive.PieceKey(cluster, p), bytes.NewReader([]byte("x")), 1); err != nil {
			t.Fatal(err)
		}
	}
	putSummaries(t, f, 1, 40)
	before := repotest.Keys(t, f.Store, "")

	// Dry run: nothing changes.
	res, err := Run(ctx, f.Repo, fakeArchive{}, Options{Policy: Policy{Last: 2}, DryRun: true, Now: func() time.Time { return days(5) }})
	if err != nil {
		t.Fatal(err)
	}
	if got := kept(res.Clusters[0].Decisions); got != snaps[2].ID+","+snaps[3].ID {
		t.Fatalf("dry run keeps %s", got)
	}
	if after := repotest.Keys(t, f.Store, ""); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatal("dry run changed the repository")
	}

	// A drill reading the cluster: expire leaves it alone.
	l, err := f.Repo.AcquireLease(ctx, "restore/7000000000000000001", lease.Options{Command: "drill"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(ctx, f.Repo, fakeArchive{}, Options{Policy: Policy{Last: 2}, Now: func() time.Time { return days(5) }})
	var se *SkippedError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "drill") {
		t.Fatalf("expire during a drill: %v", err)
	}
	if after := repotest.Keys(t, f.Store, ""); len(after) != len(before)+1 { // + the lease
		t.Fatal("expire during a drill changed the repository")
	}
	l.Release(ctx)

	arch := fakeArchive{wal: walarchive.New(f.Store, f.Repo, f.Repo.WALMACKey(), walarchive.Options{})}
	if _, err := Run(ctx, f.Repo, arch, Options{Policy: Policy{Last: 2}, Now: func() time.Time { return days(5) }}); err != nil {
		t.Fatal(err)
	}
	left, err := f.Repo.Snapshots(ctx, 0)
	if err != nil || len(left) != 2 || left[0].ID != snaps[2].ID {
		t.Fatalf("snapshots left: %v %v", left, err)
	}
	// WAL before the oldest kept snapshot's start (segment 22) is gone,
	// long-term ranges aside: last 2 keeps 22..22 and 32 on, each with its
	// block summary.
	wal := repotest.Keys(t, f.Store, walarchive.ClusterPrefix(cluster))
	if len(wal) != 2*(1+9)+1 { // 22, 32..40 and their summaries; the pieces of 41
		t.Fatalf("WAL left: %v", wal)
	}
	for _, k := range wal {
		if strings.HasSuffix(k, ".piece") {
			continue
		}
		seg := strings.TrimSuffix(k, walarchive.SummarySuffix)
		if !slices.Contains(wal, seg) || !slices.Contains(wal, seg+walarchive.SummarySuffix) {
			t.Fatalf("%s left without its pair: %v", k, wal)
		}
	}
	exp, err := arch.wal.Expired(ctx, cluster)
	if err != nil || !exp.Covers(1, 1, 21) || !exp.Covers(1, 23, 31) || exp.Covers(1, 22, 22) {
		t.Fatalf("expired record %v %v", exp, err)
	}
}
