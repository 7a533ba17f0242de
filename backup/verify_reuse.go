package backup

import (
	"context"
	"fmt"
	"sync"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
)

// reuseCheckers bounds the parallel HEAD requests of checkReused.
const reuseCheckers = 8

// checkReused re-checks, before a snapshot refers to them, the packs that
// hold blobs this run found already stored instead of storing them: an
// interrupted earlier run's uploads, or another snapshot's. Each must still
// exist with the size the index records (PITFALLS: a resumed backup must
// re-verify what it reuses). It returns how many packs it checked.
func checkReused(ctx context.Context, st storage.Store, packs map[pack.ID]index.Pack) (int, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, reuseCheckers)
	var wg sync.WaitGroup
	for _, p := range packs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			key := p.Key()
			oi, err := st.Head(ctx, key)
			switch {
			case err != nil:
				cancel(fmt.Errorf("re-check reused pack %s: %w; run tidemark repair index, then back up again", key, err))
			case oi.Size != p.CipherSize():
				cancel(&repo.CorruptError{Key: key, Err: fmt.Errorf("reused pack has %d bytes, the index says %d; run tidemark repair index, then back up again", oi.Size, p.CipherSize())})
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	return len(packs), nil
}
