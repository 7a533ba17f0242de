package repo

import (
	"context"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// BenchmarkReadBlobsSmallCalls reads base slots as a backup's workers do:
// two workers, each a ReadBlobs of a few slots at a time, with the backup's
// 8 MiB ReadMemory.
func BenchmarkReadBlobsSmallCalls(b *testing.B) {
	slots := loadSlots(b, "pgbench")
	store := mem.New()
	id, _ := age.GenerateX25519Identity()
	spec, _ := ParseRecipient(id.Recipient().String(), "")
	r, _, err := Init(context.Background(), store, InitOptions{Key: spec, Options: Options{ReadMemory: 8 << 20}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	w, _ := r.NewWriter(context.Background(), "bench")
	var ids []blob.ID
	var buf []byte
	for i := range 256 {
		buf = uniqueSlot(buf, slots[i%len(slots)], uint64(i))
		id, _ := w.Add(context.Background(), blob.KindSlot, buf)
		ids = append(ids, id)
	}
	w.Close(context.Background())
	b.SetBytes(blob.SlotSize * 4)
	b.SetParallelism(1)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			k := (i * 37) % (len(ids) - 4)
			i++
			if err := r.ReadBlobs(context.Background(), ids[k:k+4], func(blob.ID, []byte) error { return nil }); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
