package pgtest

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
)

// WriteRelFiles writes n one-page relation files named from first on into
// dir, as a database of many small relations has them: a page header, a
// KiB of random bytes (the rest zero, so that they compress as small tables
// do), a valid checksum, and an mtime an hour old.
func WriteRelFiles(t testing.TB, dir string, first, n int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	page := make([]byte, 8192)
	old := time.Now().Add(-time.Hour)
	for i := range n {
		clear(page)
		for j := 24; j < 1024; j += 8 {
			binary.LittleEndian.PutUint64(page[j:], rng.Uint64())
		}
		binary.LittleEndian.PutUint16(page[12:], 24)     // pd_lower
		binary.LittleEndian.PutUint16(page[14:], 8192)   // pd_upper
		binary.LittleEndian.PutUint16(page[16:], 8192)   // pd_special
		binary.LittleEndian.PutUint16(page[18:], 8192|4) // pd_pagesize_version
		binary.LittleEndian.PutUint16(page[8:], pg.PageChecksum(page, 0))
		name := filepath.Join(dir, strconv.Itoa(first+i))
		if err := os.WriteFile(name, page, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(name, old, old); err != nil {
			t.Fatal(err)
		}
	}
}
