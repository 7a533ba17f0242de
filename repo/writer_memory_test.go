package repo

import (
	"encoding/binary"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// TestWriterMemoryFlat: a writer adding many small blobs (a million small
// files' page maps and contents) holds a bounded number of them whatever
// their number: the index keeps at most IndexMemory bytes of entries (plus
// its overlay, an eighth of that) and spills the rest, and the blobs not
// yet in an index delta (the pending set) stay under a bound set by
// deltaBlobs, packBlobs and the packs in flight. Every blob stays found.
func TestWriterMemoryFlat(t *testing.T) {
	const entries = 16384
	f := initRepo(t, mem.New())
	for _, n := range []int{30_000, 150_000} {
		r := f.reopen(t, Options{IndexSpillDir: t.TempDir(), IndexMemory: entries * int64(index.EntryMemSize),
			PackMemory: 8 << 20})
		w, err := r.NewWriter(ctx, "many small blobs")
		if err != nil {
			t.Fatal(err)
		}
		// Blobs in an index delta's making, in packs open, queued and
		// uploading, and in one more pack per uploader waiting for the
		// delta to be written.
		pendingBound := deltaBlobs + packBlobs*(2+cap(w.queue)+2*r.opts.UploadConcurrency)
		idxBound := int64(entries+entries/8) * int64(index.EntryMemSize)
		var ids []blob.ID
		maxPending, maxEntries := 0, int64(0)
		b := make([]byte, 120)
		for i := range n {
			binary.LittleEndian.PutUint64(b, uint64(i)|uint64(n)<<40)
			k := blob.KindFileMap
			if i%2 == 0 {
				k = blob.KindFile
			}
			id, err := w.Add(ctx, k, b)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
			if i%500 == 0 {
				w.mu.Lock()
				maxPending = max(maxPending, len(w.pending))
				w.mu.Unlock()
				maxEntries = max(maxEntries, w.idx.EntryBytes())
			}
		}
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d blobs: up to %d pending (bound %d), up to %d bytes of index entries in memory (bound %d), %d deltas",
			n, maxPending, pendingBound, maxEntries, idxBound, w.Stats().Deltas)
		if maxPending > pendingBound {
			t.Errorf("%d blobs: %d pending, bound %d", n, maxPending, pendingBound)
		}
		if maxEntries > idxBound {
			t.Errorf("%d blobs: %d bytes of index entries in memory, bound %d", n, maxEntries, idxBound)
		}
		for _, id := range ids {
			if !w.idx.Has(id) {
				t.Fatalf("blob %s not indexed", id)
			}
		}
	}
}
