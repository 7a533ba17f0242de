package restore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/osuser"
	"github.com/tidemarkdb/tidemark/pg"
)

// BenchmarkRestore restores a snapshot of 32 relation files of 8 MiB of
// random pages from an in-memory repository.
func BenchmarkRestore(b *testing.B) {
	r := newRepo(b)
	files := map[string]tfile{}
	for i := range 32 {
		files[fmt.Sprintf("base/1/%d", 16384+i)] = tfile{data: randomBytes(uint64(i), 8<<20), rel: true}
	}
	commitSnapshot(b, r, snapSpec{files: files, start: 0x200028, stop: 0x300100, stopTime: t0})
	a := newArchive()
	a.addRange(1, 1, 5)
	b.SetBytes(32 * 8 << 20)
	for b.Loop() {
		dir := filepath.Join(b.TempDir(), "pgdata")
		_, err := Run(context.Background(), r, a, Options{PGData: dir, Logger: testLogger(b), Owner: &osuser.Owner{}, Target: pg.RecoveryTarget{Kind: pg.TargetLSN, LSN: pg.LSN(0x400000)}})
		if err != nil {
			b.Fatal(err)
		}
	}
}
