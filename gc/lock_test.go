package gc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
)

// TestLockedRepository runs gc on a repository in a MinIO bucket with
// object lock and a lock of a few seconds: while the lock holds, garbage is
// reported as locked and nothing is attempted (no error, no quarantine);
// the first run after the lock has passed deletes it, every version.
func TestLockedRepository(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testenv.MinIO(t)
	lock := &repo.Lock{Mode: storage.RetentionCompliance, PeriodSeconds: 6}
	f := repotest.NewLocked(t, repotest.LockedMinIO(t, srv), lock)
	before := time.Now()
	live := repotest.File{Name: "a", Data: randData(300 << 10)}
	s := repotest.Commit(t, f.Repo, repotest.Snap{}, live)
	repotest.Garbage(t, f.Open(t), randData(400<<10))
	written := time.Now()
	packs := len(packKeys(t, f))

	// The store refuses to delete a locked pack, whoever asks.
	garbage := packKeys(t, f)[0]
	if err := f.Repo.Store().Delete(ctx, garbage); !errors.Is(err, storage.ErrLocked) {
		t.Fatalf("delete of a locked pack: %v, want ErrLocked", err)
	}

	o := Options{Grace: time.Nanosecond, PollEvery: 10 * time.Millisecond}
	res, err := Run(ctx, f.Open(t), o)
	if err != nil {
		t.Fatalf("gc while the lock holds: %v", err)
	}
	if res.Deleted.Packs != 0 || res.Quarantined.Packs != 0 || res.Locked.Packs == 0 || res.LockedUntil.Before(before.Add(lock.Period())) {
		t.Fatalf("gc while the lock holds: deleted %+v, quarantined %+v, locked %+v until %v; want only locked packs",
			res.Deleted, res.Quarantined, res.Locked, res.LockedUntil)
	}
	if got := len(packKeys(t, f)); got != packs {
		t.Fatalf("%d packs left of %d while locked", got, packs)
	}
	// Index compaction leaves the superseded index objects the lock holds.
	for range 2 {
		if _, err := f.Repo.CompactIndex(ctx); err != nil {
			t.Fatalf("compaction while the lock holds: %v", err)
		}
	}
	if st, err := f.Repo.CompactIndex(ctx); err != nil || st.Locked == 0 || st.Deleted != 0 {
		t.Fatalf("third compaction while the lock holds: %+v %v; want superseded objects left locked", st, err)
	}

	// Past the lock of the last pack written, and the slack gc allows.
	time.Sleep(time.Until(written.Add(lock.Period() + lock.Period()/10 + 500*time.Millisecond)))
	res, err = Run(ctx, f.Open(t), o)
	if err != nil {
		t.Fatalf("gc after the lock: %v", err)
	}
	if res.Deleted.Packs == 0 || res.Locked.Packs != 0 {
		t.Fatalf("gc after the lock: deleted %+v, locked %+v; want the garbage deleted", res.Deleted, res.Locked)
	}
	if got := len(packKeys(t, f)); got != packs-res.Deleted.Packs {
		t.Fatalf("%d packs left of %d, %d deleted", got, packs, res.Deleted.Packs)
	}
	readAll(t, f.Open(t), s, live)
}
