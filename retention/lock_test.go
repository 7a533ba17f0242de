package retention

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// TestExpireLockedRepository runs expire on a repository in a MinIO bucket
// with object lock and a lock of a few seconds: while it holds, the
// snapshots the policy drops stay (kept "for the object lock") with their
// WAL, nothing is attempted and nothing fails; the first run after the lock
// has passed removes them and the WAL only they needed.
func TestExpireLockedRepository(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testenv.MinIO(t)
	lock := &repo.Lock{Mode: storage.RetentionGovernance, PeriodSeconds: 6}
	f := repotest.NewLocked(t, repotest.LockedMinIO(t, srv), lock)
	now := time.Now()
	for i := range 3 {
		repotest.Commit(t, f.Repo, repotest.Snap{Cluster: cluster, Start: now.Add(time.Duration(i-3) * time.Hour),
			StartLSN: uint64(10*i+2)*segSize + 0x28}, repotest.File{Name: "f", Data: []byte{byte(i)}})
	}
	for s := pg.SegNo(1); s <= 30; s++ {
		k, err := walarchive.Key(cluster, pg.SegmentName(1, s, segSize))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Repo.Store().Create(ctx, k, bytes.NewReader([]byte("x")), 1); err != nil {
			t.Fatal(err)
		}
	}
	written := time.Now() // everything is written by now
	a := fakeArchive{wal: walarchive.FromRepo(f.Repo, walarchive.Options{})}
	opts := Options{Policy: Policy{Last: 1}}

	res, err := Run(ctx, f.Open(t), a, opts)
	if err != nil {
		t.Fatalf("expire while the lock holds: %v", err)
	}
	cr := res.Clusters[0]
	if cr.Removed != 0 || len(cr.WAL) != 0 || cr.LockedSnapshots != 2 || cr.LockedWAL == 0 {
		t.Fatalf("expire while the lock holds: removed %d snapshots and %d WAL files, locked %d snapshots and %d WAL files; want 0, 0, 2, >0",
			cr.Removed, len(cr.WAL), cr.LockedSnapshots, cr.LockedWAL)
	}
	if snaps, _ := f.Repo.Snapshots(ctx, cluster); len(snaps) != 3 {
		t.Fatalf("%d snapshots left while locked, want 3", len(snaps))
	}

	// The lock of the last object written, and the slack expire allows.
	time.Sleep(time.Until(written.Add(lock.Period() + lock.Period()/10 + time.Second)))
	res, err = Run(ctx, f.Open(t), a, opts)
	if err != nil {
		t.Fatalf("expire after the lock: %v", err)
	}
	cr = res.Clusters[0]
	if cr.Removed != 2 || len(cr.WAL) == 0 || cr.LockedSnapshots != 0 || cr.LockedWAL != 0 {
		t.Fatalf("expire after the lock: removed %d snapshots and %d WAL files, locked %d and %d; want 2, >0, 0, 0",
			cr.Removed, len(cr.WAL), cr.LockedSnapshots, cr.LockedWAL)
	}
	if snaps, _ := f.Repo.Snapshots(ctx, cluster); len(snaps) != 1 {
		t.Fatalf("%d snapshots left, want 1", len(snaps))
	}
	for _, w := range cr.WAL {
		if _, err := f.Repo.Store().Head(ctx, w.Key); err == nil {
			t.Fatalf("%s still there after expire removed it", w.Key)
		}
	}
}
