package walarchive

import (
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// TestLockCoversTheArchive: a locked repository locks every object of the
// WAL archive and not the record of expired WAL, which is rewritten.
func TestLockCoversTheArchive(t *testing.T) {
	seg, _ := Key(1, pg.SegmentName(1, 3, 16<<20))
	hist, _ := Key(1, "00000002.history")
	for _, k := range []string{seg, hist, MarkerKey(1), seg + ".partial"} {
		if !repo.LockCovers(k) {
			t.Errorf("LockCovers(%q) = false", k)
		}
	}
	if repo.LockCovers(ExpiredKey(1)) {
		t.Errorf("LockCovers(%q) = true: the record is rewritten by every expire", ExpiredKey(1))
	}
}
