package bench

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
)

// LagSampler samples how far archiving trails WAL generation: the number
// of completed segments PostgreSQL has not yet reported archived
// (pg_stat_archiver), every Every.
type LagSampler struct {
	mu      sync.Mutex
	max     int64
	samples []int64
	cancel  context.CancelFunc
	done    chan struct{}
}

// SampleLag starts sampling c's archive lag every every; segSize is the
// cluster's WAL segment size. Stop ends it.
func SampleLag(t testing.TB, c *testenv.Cluster, segSize uint32, every time.Duration) *LagSampler {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &LagSampler{cancel: cancel, done: make(chan struct{})}
	conn, err := c.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			var cur, last string
			err := conn.QueryRow(ctx, `SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '')
				FROM pg_stat_archiver`).Scan(&cur, &last)
			if err == nil && len(cur) == 24 && len(last) >= 24 {
				lag := SegIndex(cur, segSize) - SegIndex(last[:24], segSize) - 1
				s.mu.Lock()
				s.samples = append(s.samples, max(lag, 0))
				s.max = max(s.max, lag)
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// SegIndex is the segment number a segment name denotes (timeline aside),
// for counting segments between two names.
func SegIndex(name string, segSize uint32) int64 {
	log, _ := strconv.ParseInt(name[8:16], 16, 64)
	seg, _ := strconv.ParseInt(name[16:24], 16, 64)
	return log*int64(pg.SegmentsPerXLogID(segSize)) + seg
}

// Stop ends sampling and returns the largest lag seen and the samples.
func (s *LagSampler) Stop() (maxLag int64, samples []int64) {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max, s.samples
}
