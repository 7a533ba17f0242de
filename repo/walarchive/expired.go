package walarchive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
)

// ExpiredPrefix is the key prefix of the records of WAL that expire
// removed on purpose: retention/<cluster>. The record belongs to the
// archive's format: expire writes it, verify reads it to tell an expired
// gap from a lost one.
const ExpiredPrefix = "retention/"

// maxExpiredRecord bounds a decoded record.
const maxExpiredRecord = 64 << 20

// expiredJSON is the record of a cluster's WAL that expire removed on
// purpose: per timeline, the segment runs. Verify reports a gap it covers as
// expired, not as lost.
type expiredJSON struct {
	Format  int           `json:"format"`
	Cluster uint64        `json:"cluster,string"`
	Updated time.Time     `json:"updated"`
	SegSize uint32        `json:"wal_segment_size"`
	Expired []expiredSpan `json:"expired"`
}

type expiredSpan struct {
	Timeline pg.TimelineID `json:"timeline"`
	First    pg.SegNo      `json:"first,string"`
	Last     pg.SegNo      `json:"last,string"`
}

// ExpiredKey returns the key of a cluster's record of expired WAL.
func ExpiredKey(cluster uint64) string { return ExpiredPrefix + strconv.FormatUint(cluster, 10) }

// Expired reads the runs expire removed from a cluster's archive (none
// when there is no record).
func (a *Archive) Expired(ctx context.Context, cluster uint64) (Ranges, error) {
	key := ExpiredKey(cluster)
	rc, err := a.store.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return Ranges{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	pr, err := a.crypt.Decrypt(rc)
	if err != nil {
		return nil, &repo.CorruptError{Key: key, Err: err}
	}
	b, err := io.ReadAll(io.LimitReader(pr, maxExpiredRecord+1))
	if err != nil || len(b) > maxExpiredRecord {
		return nil, &repo.CorruptError{Key: key, Err: fmt.Errorf("unreadable: %v", err)}
	}
	var rec expiredJSON
	if err := json.Unmarshal(b, &rec); err != nil || rec.Cluster != cluster {
		return nil, &repo.CorruptError{Key: key, Err: fmt.Errorf("not the record of cluster %d: %v", cluster, err)}
	}
	out := Ranges{}
	for _, s := range rec.Expired {
		out.Add(s.Timeline, s.First, s.Last)
	}
	return MergeRanges(out, nil), nil
}

// RecordExpired adds runs to a cluster's record of expired WAL. Expire
// writes it before it deletes the runs, so that verify never takes a
// deliberate gap for a lost segment.
func (a *Archive) RecordExpired(ctx context.Context, cluster uint64, add Ranges, now time.Time) error {
	old, err := a.Expired(ctx, cluster)
	if err != nil {
		return err
	}
	all := MergeRanges(old, add)
	rec := expiredJSON{Format: 1, Cluster: cluster, Updated: now.UTC()}
	tls := make([]pg.TimelineID, 0, len(all))
	for t := range all {
		tls = append(tls, t)
	}
	slices.Sort(tls)
	for _, t := range tls {
		for _, x := range all[t] {
			rec.Expired = append(rec.Expired, expiredSpan{t, x.First, x.Last})
		}
	}
	body, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	w, err := a.crypt.Encrypt(&buf)
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	key := ExpiredKey(cluster)
	if err := a.store.Put(ctx, key, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}
