package repo

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// TestReadBlobsShareReadMemory: concurrent ReadBlobs calls of one Repo (a
// backup's workers reading base slots) hold at most Options.ReadMemory
// between them, not that much each, and still deliver every blob.
func TestReadBlobsShareReadMemory(t *testing.T) {
	f := initRepo(t, mem.New())
	var list [][]byte
	for i := range 48 {
		list = append(list, randBytes(150_000+i)) // incompressible: a span each
	}
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: list})
	const limit = 1 << 20
	r := f.reopen(t, Options{ReadMemory: limit, ReadConcurrency: 8, CoalesceGap: 1})
	var all []blob.ID
	for id := range ids {
		all = append(all, id)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			part := all[c*len(all)/4 : (c+1)*len(all)/4]
			errs <- r.ReadBlobs(ctx, part, func(id blob.ID, data []byte) error {
				if !bytes.Equal(data, ids[id]) {
					return fmt.Errorf("blob %s differs", id)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	r.readMem.mu.Lock()
	peak, used := r.readMem.peak, r.readMem.used
	r.readMem.mu.Unlock()
	if peak == 0 || peak > limit {
		t.Fatalf("peak bytes in flight %d, want 1 to %d (ReadMemory)", peak, limit)
	}
	if used != 0 {
		t.Fatalf("%d bytes still held after every read returned", used)
	}
}

// TestReadBudgetWaits: a request past the budget waits for a release; one
// larger than the whole budget is granted when nothing else is held (a
// huge blob is read alone rather than never), and a cancelled wait gives
// up without holding anything.
func TestReadBudgetWaits(t *testing.T) {
	b := newReadBudget(100)
	if err := b.acquire(ctx, 80); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.acquire(ctx, 30) }()
	select {
	case err := <-done:
		t.Fatalf("acquire past the budget returned (%v) before a release", err)
	default:
	}
	b.release(80)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.release(30)
	if err := b.acquire(ctx, 500); err != nil { // alone: granted
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- b.acquire(cctx, 1) }()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a cancelled wait returned nil")
	}
	b.release(500)
	if b.used != 0 || b.peak != 500 {
		t.Fatalf("used %d, peak %d; want 0 and 500", b.used, b.peak)
	}
}
