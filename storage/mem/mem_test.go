package mem_test

import (
	"testing"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/mem"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// TestConformance holds the in-process store that unit tests use in place
// of a real one to the same contract as the real drivers.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return mem.New() })
}
