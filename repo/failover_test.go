package repo

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// storeBlobs adds the blobs through a writer of r and returns their IDs.
func storeBlobs(t *testing.T, r *Repo, data [][]byte) []blob.ID {
	t.Helper()
	ctx := context.Background()
	w, err := r.NewWriter(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	var ids []blob.ID
	for _, d := range data {
		id, err := w.Add(ctx, blob.KindFile, d)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestFailoverMidRead: the first repository goes down in the middle of a
// batch read; the blobs not delivered yet come from the second, each blob
// exactly once, and later reads go to the second without trying the first.
// A blob the first lacks, by contrast, is an answer, not a reason to switch.
func TestFailoverMidRead(t *testing.T) {
	ctx := context.Background()
	st1 := fault.New(mem.New())
	f1 := initRepo(t, st1)
	f2 := initRepo(t, mem.New(), func(o *InitOptions) { o.ShareSecretOf = f1.repo })
	var data [][]byte
	for range 40 {
		data = append(data, randBytes(200<<10))
	}
	ids := storeBlobs(t, f1.repo, data)
	if ids2 := storeBlobs(t, f2.repo, data); ids2[7] != ids[7] {
		t.Fatal("blob IDs differ between repositories that share the secret")
	}

	opened := 0
	fo := NewFailover(f1.reopen(t, Options{ReadConcurrency: 2}), func(context.Context) (*Repo, error) {
		opened++
		return f2.reopen(t, Options{}), nil
	}, testLogger(t))
	missing := compressible(1000, 99)
	if _, err := fo.ReadBlob(ctx, fo.BlobID(blob.KindFile, missing), nil); !errors.Is(err, ErrBlobNotFound) || fo.FailedOver() != nil {
		t.Fatalf("a blob the first lacks: %v, failed over: %v", err, fo.FailedOver())
	}

	var mu sync.Mutex
	seen := map[blob.ID]int{}
	err := fo.ReadBlobs(ctx, ids, func(id blob.ID, b []byte) error {
		mu.Lock()
		defer mu.Unlock()
		seen[id]++
		if len(seen) == 10 {
			st1.Down()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Fatalf("blob %s delivered %d times", id, seen[id])
		}
	}
	if fo.FailedOver() == nil || fo.Active() == nil || fo.Active().Config().ID != f2.repo.Config().ID || opened != 1 {
		t.Fatalf("failed over: %v, opened %d", fo.FailedOver(), opened)
	}
	calls := st1.Calls(fault.All)
	if _, err := fo.ReadBlob(ctx, ids[3], nil); err != nil {
		t.Fatal(err)
	}
	if st1.Calls(fault.All) != calls {
		t.Fatal("a read after the switch went to the first repository")
	}
}

// TestFailoverRefusesForeign: a second repository that does not share the
// secret is not switched to; the first one's failure stands.
func TestFailoverRefusesForeign(t *testing.T) {
	st1 := fault.New(mem.New())
	f1 := initRepo(t, st1)
	other := initRepo(t, mem.New())
	ids := storeBlobs(t, f1.repo, [][]byte{compressible(1000, 1)})
	fo := NewFailover(f1.reopen(t, Options{}), func(context.Context) (*Repo, error) { return other.repo, nil }, testLogger(t))
	st1.Down()
	if _, err := fo.ReadBlob(context.Background(), ids[0], nil); err == nil || fo.FailedOver() != nil {
		t.Fatalf("read with the first down and a foreign second: %v, failed over %v", err, fo.FailedOver())
	}
}
