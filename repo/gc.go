package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
)

// What garbage collection (package gc) needs from the repository format:
// quarantine records that writers honour, the raw index with every location
// of every blob, a compaction that leaves packs out, and reading a whole pack
// by its index record. The protocol itself lives in package gc; the only
// rule enforced here is the writers' side of it: a Writer never
// deduplicates against a quarantined pack (see NewWriter).

// QuarantinePrefix is the key prefix of quarantine records:
// gc/quarantine/<id>.
const QuarantinePrefix = "gc/quarantine/"

// maxQuarantine bounds a decoded quarantine record (about 150 bytes a pack).
const maxQuarantine = 256 << 20

// Quarantine is a sealed record of packs that garbage collection intends to
// delete. From the moment it exists, a Writer that starts does not
// deduplicate against blobs stored in those packs (it stores its own copy);
// readers still read them. It is deleted when the packs are deleted or
// released.
type Quarantine struct {
	Format  int               `json:"format"`
	ID      string            `json:"id"`
	Created time.Time         `json:"created"`
	Host    string            `json:"host"`
	Packs   []QuarantinedPack `json:"packs"`
	// Leases are the keys of the leases that were live just after the
	// record was written; LeasesListed says that list was taken (a record
	// whose holder crashed before listing has none).
	Leases       []string `json:"leases,omitempty"`
	LeasesListed bool     `json:"leases_listed"`
}

// QuarantinedPack is one pack of a Quarantine.
type QuarantinedPack struct {
	Key    string `json:"key"`  // object key, data/... or meta/...
	Size   int64  `json:"size"` // bytes of the object when it was quarantined
	Reason string `json:"reason"`
}

// QuarantineKey returns the object key of a quarantine record.
func QuarantineKey(id string) string { return QuarantinePrefix + id }

// CreateQuarantine writes a new quarantine record, create-only. It fills
// ID, Created, Host and Format when they are empty.
func (r *Repo) CreateQuarantine(ctx context.Context, q *Quarantine) error {
	if q.ID == "" {
		q.ID = lease.NewID(r.opts.Now())
	}
	if q.Created.IsZero() {
		q.Created = r.opts.Now().UTC()
	}
	if q.Host == "" {
		q.Host = r.opts.Host
	}
	return r.putQuarantine(ctx, q, true)
}

// UpdateQuarantine rewrites an existing quarantine record (its holder adds
// the lease list, or releases packs).
func (r *Repo) UpdateQuarantine(ctx context.Context, q *Quarantine) error {
	return r.putQuarantine(ctx, q, false)
}

func (r *Repo) putQuarantine(ctx context.Context, q *Quarantine, create bool) error {
	q.Format = FormatVersion
	if q.ID == "" || strings.Contains(q.ID, "/") {
		return fmt.Errorf("quarantine record id %q", q.ID)
	}
	body, err := json.Marshal(q)
	if err != nil {
		return err
	}
	key := QuarantineKey(q.ID)
	if err := r.putSealed(ctx, key, body, create); err != nil {
		return fmt.Errorf("write quarantine record %s: %w", key, err)
	}
	return nil
}

// Quarantines reads every quarantine record. One deleted while it is read
// (its collection finished) is left out.
func (r *Repo) Quarantines(ctx context.Context) ([]*Quarantine, error) {
	var keys []string
	for oi, err := range r.store.List(ctx, QuarantinePrefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", QuarantinePrefix, err)
		}
		keys = append(keys, oi.Key)
	}
	var out []*Quarantine
	for _, k := range keys {
		b, err := r.getSealed(ctx, k, maxQuarantine)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read quarantine record %s: %w", k, err)
		}
		var q Quarantine
		if err := json.Unmarshal(b, &q); err != nil {
			return nil, corrupt(k, "%v", err)
		}
		if q.Format > FormatVersion {
			return nil, &VersionError{Key: k, Version: q.Format, Supported: FormatVersion}
		}
		if QuarantineKey(q.ID) != k {
			return nil, corrupt(k, "quarantine record names itself %s", q.ID)
		}
		out = append(out, &q)
	}
	return out, nil
}

// DeleteQuarantine deletes a quarantine record: its packs are no longer
// excluded from deduplication (those still present are kept).
func (r *Repo) DeleteQuarantine(ctx context.Context, id string) error {
	if err := r.store.Delete(ctx, QuarantineKey(id)); err != nil {
		return fmt.Errorf("delete quarantine record %s: %w", QuarantineKey(id), err)
	}
	return nil
}

// QuarantinedPacks returns the IDs of the packs the records hold.
func QuarantinedPacks(qs []*Quarantine) map[pack.ID]struct{} {
	out := make(map[pack.ID]struct{})
	for _, q := range qs {
		for _, p := range q.Packs {
			if _, id, err := pack.ParseKey(p.Key); err == nil {
				out[id] = struct{}{}
			}
		}
	}
	return out
}

// excludeQuarantined reads the quarantine records and, when there are any,
// makes this Repo's index leave their packs out from now on (reloading it
// if it was loaded), so that neither a Writer's deduplication nor a
// Lookup of this process finds a blob only there. A writer process calls it
// (through NewWriter) after taking its lease: whatever garbage collection
// quarantined before then is invisible to it, and whatever it quarantines
// later waits for the lease to end.
func (r *Repo) excludeQuarantined(ctx context.Context) error {
	qs, err := r.Quarantines(ctx)
	if err != nil {
		return err
	}
	r.idxMu.Lock()
	added := r.addExcludedLocked(QuarantinedPacks(qs))
	loaded := r.idxLoaded
	r.idxMu.Unlock()
	if added && loaded {
		return r.ReloadIndex(ctx)
	}
	return nil
}

// addExcludedLocked adds packs to r.exclude and reports whether any was
// new. The caller holds idxMu.
func (r *Repo) addExcludedLocked(ids map[pack.ID]struct{}) bool {
	r.quarantinesRead = true
	added := false
	for id := range ids {
		if _, ok := r.exclude[id]; ok {
			continue
		}
		if r.exclude == nil {
			r.exclude = make(map[pack.ID]struct{})
		}
		r.exclude[id] = struct{}{}
		added = true
	}
	return added
}

// splitFile splits f into the packs drop does not hold and those it does,
// each with its blobs and pack numbers renumbered. kept is f itself and
// dropped nil when f has no pack in drop.
func splitFile(f *index.File, drop map[pack.ID]struct{}) (kept, dropped *index.File) {
	if len(drop) == 0 {
		return f, nil
	}
	renum := make([]uint32, len(f.Packs))
	isDropped := make([]bool, len(f.Packs))
	kept, dropped = &index.File{}, &index.File{}
	for i, p := range f.Packs {
		out := kept
		if _, ok := drop[p.ID]; ok {
			out, isDropped[i] = dropped, true
		}
		renum[i] = uint32(len(out.Packs))
		out.Packs = append(out.Packs, p)
	}
	if len(dropped.Packs) == 0 {
		return f, nil
	}
	for _, e := range f.Blobs {
		out := kept
		if isDropped[e.Pack] {
			out = dropped
		}
		e.Pack = renum[e.Pack]
		out.Blobs = append(out.Blobs, e)
	}
	return kept, dropped
}

// IndexFiles returns the files of the current index (the newest complete
// generation and the deltas it does not cover) as stored, unfiltered: unlike
// the in-memory index, they keep every location of a blob stored more than
// once, which garbage collection needs to know whether a blob survives the
// deletion of one of its packs.
func (r *Repo) IndexFiles(ctx context.Context) ([]*index.File, error) {
	var err error
	for range loadAttempts {
		var files []*index.File
		_, err = r.loadIndexOnce(ctx, func(f *index.File) { files = append(files, f) })
		if err == nil {
			return files, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("load index files: objects keep vanishing (compaction running?): %w", err)
}

// CompactIndexWithout is CompactIndex that leaves out every entry of the
// packs in drop, keeping the other locations of blobs stored more than
// once. Garbage collection calls it before it deletes those packs.
func (r *Repo) CompactIndexWithout(ctx context.Context, drop map[pack.ID]struct{}) (CompactStats, error) {
	l, err := r.AcquireLease(ctx, compactLease, lease.Options{Exclusive: true, Command: "gc index rewrite"})
	if err != nil {
		return CompactStats{}, err
	}
	defer l.Release(context.WithoutCancel(ctx))
	idx, _, st, err := r.loadIndexFiltered(ctx, drop)
	if err != nil {
		return CompactStats{}, err
	}
	stats, err := r.writeGeneration(ctx, idx, st, st.deltas)
	if err != nil {
		return stats, err
	}
	r.ReloadIndex(ctx)
	return stats, nil
}
