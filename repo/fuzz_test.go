package repo

import (
	"encoding/json"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

func FuzzDecodeSnapshot(f *testing.F) {
	s := testSnapshot(blob.ID{1})
	s.ID = "20250101T000000Z-abcd"
	s.Format = FormatVersion
	b, _ := json.Marshal(s)
	key := SnapshotKey(s.Cluster, s.ID)
	f.Add(b)
	f.Add([]byte(`{"format":99}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSnapshot(key, b)
		if err != nil {
			return
		}
		out, _ := json.Marshal(s)
		if _, err := DecodeSnapshot(key, out); err != nil {
			t.Fatalf("re-encoded snapshot: %v", err)
		}
	})
}

func FuzzDecodeConfig(f *testing.F) {
	c := Config{Format: 1, ID: "abc", PackSize: DefaultPackSize, SlotSize: blob.SlotSize, Compression: "zstd", CompressionLevel: 1}
	b, _ := c.Encode()
	f.Add(b)
	f.Add([]byte(`{"format":2}`))
	c.Lock = &Lock{Mode: "governance", PeriodSeconds: 86400}
	b, _ = c.Encode()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeConfig(b)
		if err != nil {
			return
		}
		if _, err := c.Encode(); err != nil {
			t.Fatalf("decoded config does not encode: %v", err)
		}
	})
}

func FuzzUnsealAndMarker(f *testing.F) {
	r := initRepo(f, newMemStore()).repo
	ct, _ := r.seal([]byte(`{"format":1,"seq":1}`))
	f.Add(ct)
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := r.unseal("index/gen/0000000001/complete", b, 1<<20); err == nil {
			var m genMarker
			json.Unmarshal(p, &m)
		}
	})
}
