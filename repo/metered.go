package repo

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/tidemarkdb/tidemark/storage"
)

// metered counts what a Repo reads from its store: the bytes its GETs
// deliver and how many it makes, for the cost a command reports
// (ReadStats). It adds two atomic additions per read.
type metered struct {
	storage.Store
	bytes, gets atomic.Int64
}

func (m *metered) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	m.gets.Add(1)
	rc, err := m.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return &countedReader{ReadCloser: rc, n: &m.bytes}, nil
}

func (m *metered) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	m.gets.Add(1)
	rc, err := m.Store.GetRange(ctx, key, off, length)
	if err != nil {
		return nil, err
	}
	return &countedReader{ReadCloser: rc, n: &m.bytes}, nil
}

type countedReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countedReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// ReadStats are the bytes GETs from the repository's store delivered, and
// how many GETs there were, since the Repo was opened: packs, index, the
// WAL archive (which reads through Store) alike.
type ReadStats struct {
	Bytes int64
	Gets  int64
}

// ReadStats returns what the Repo read from its store so far.
func (r *Repo) ReadStats() ReadStats {
	if m, ok := r.store.(*metered); ok {
		return ReadStats{Bytes: m.bytes.Load(), Gets: m.gets.Load()}
	}
	return ReadStats{}
}
