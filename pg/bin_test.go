package pg_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
)

// TestFindServerBin finds a server's binaries the ways a drill does: the
// directory named, the server running on a data directory, PATH; and
// refuses a directory of another major version.
func TestFindServerBin(t *testing.T) {
	ctx := context.Background()
	c := testenv.NewCluster(t, testenv.PGConfig{Version: 17})
	bin := filepath.Dir(c.Bin("postgres"))

	if got, err := pg.FindServerBin(ctx, pg.BinSearch{Dir: bin}, 17); err != nil || got != bin {
		t.Errorf("named directory: %q, %v", got, err)
	}
	if _, err := pg.FindServerBin(ctx, pg.BinSearch{Dir: bin}, 16); err == nil || !strings.Contains(err.Error(), "--pg-bin") {
		t.Errorf("a directory of PostgreSQL 17 taken for 16: %v", err)
	}
	// The npm build lives nowhere a search looks by itself: only the
	// running server says where it is.
	t.Setenv("PATH", "/usr/bin:/bin")
	if got, err := pg.FindServerBin(ctx, pg.BinSearch{PGData: c.DataDir}, 17); err != nil || got != bin {
		t.Errorf("from the running server: %q, %v", got, err)
	}
	if _, err := pg.FindServerBin(ctx, pg.BinSearch{}, 17); err == nil {
		t.Error("found PostgreSQL 17 with nothing pointing at it")
	}
	t.Setenv("PATH", bin+":/usr/bin:/bin")
	if got, err := pg.FindServerBin(ctx, pg.BinSearch{}, 17); err != nil || got != bin {
		t.Errorf("from PATH: %q, %v", got, err)
	}
	if m, err := pg.ServerMajor(ctx, c.Bin("postgres")); err != nil || m != 17 {
		t.Errorf("ServerMajor: %d, %v", m, err)
	}
}
