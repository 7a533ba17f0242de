package repo

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/storage"
)

// SnapshotPrefix is the object key prefix of snapshots:
// snapshots/<cluster system identifier, decimal>/<id>.
const SnapshotPrefix = "snapshots/"

// maxSnapshot bounds a decoded snapshot in bytes (backup_label and
// tablespace_map are small; tablespaces and checksum errors are lists).
const maxSnapshot = 64 << 20

// Snapshot types.
const (
	SnapshotFull        = "full"
	SnapshotIncremental = "incremental"
)

// Snapshot is the commit record of one backup. Plain types keep storage
// independent of pg/: LSNs are uint64 (as pg_lsn), the cluster is the
// system identifier from pg_control. In JSON, 64-bit integers are strings so
// that no JSON reader rounds them.
type Snapshot struct {
	Format         int    `json:"format"`
	ID             string `json:"id"`
	Cluster        uint64 `json:"cluster,string"`
	PGVersion      int    `json:"pg_version"` // server_version_num, e.g. 150004
	BlockSize      int    `json:"block_size"`
	WALSegmentSize int64  `json:"wal_segment_size"`
	DataChecksums  bool   `json:"data_checksums"`
	Parent         string `json:"parent,omitempty"` // snapshot id of the parent (incremental)
	Type           string `json:"type"`             // SnapshotFull or SnapshotIncremental

	StartLSN      uint64    `json:"start_lsn,string"`
	StopLSN       uint64    `json:"stop_lsn,string"`
	StartTimeline uint32    `json:"start_timeline"`
	StopTimeline  uint32    `json:"stop_timeline"`
	StartTime     time.Time `json:"start_time"`
	StopTime      time.Time `json:"stop_time"`

	// BackupLabel and TablespaceMap are the bytes pg_backup_stop returned,
	// verbatim (base64 in JSON).
	BackupLabel   []byte       `json:"backup_label"`
	TablespaceMap []byte       `json:"tablespace_map,omitempty"`
	Tablespaces   []Tablespace `json:"tablespaces,omitempty"`

	// Roots are the meta blobs the snapshot's file tree starts from (their
	// format belongs to the backup). Commit checks each is durable.
	Roots []blob.ID `json:"roots"`

	ChecksumErrors []ChecksumError `json:"checksum_errors,omitempty"`
	Stats          SnapshotStats   `json:"stats"`
	ToolVersion    string          `json:"tool_version"`
	Host           string          `json:"host"`
	Committed      time.Time       `json:"committed"` // set by Commit
}

// Tablespace is one tablespace at backup time.
type Tablespace struct {
	OID  uint32 `json:"oid"`
	Path string `json:"path"` // original location
}

// ChecksumError is a page whose checksum failed (after one re-read).
type ChecksumError struct {
	File     string `json:"file"` // relative to PGDATA
	Block    uint32 `json:"block"`
	Expected uint16 `json:"expected"`
	Found    uint16 `json:"found"`
}

// SnapshotStats are a backup's statistics.
type SnapshotStats struct {
	LogicalBytes int64   `json:"logical_bytes"` // bytes of files backed up
	NewBytes     int64   `json:"new_bytes"`     // bytes newly stored (after compression)
	Files        int64   `json:"files"`
	Seconds      float64 `json:"seconds"`
}

// NewSnapshotID returns an id that sorts roughly by time and is unique.
// Code orders snapshots by their recorded times and LSNs, never by id.
func NewSnapshotID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// SnapshotKey returns the object key of a snapshot.
func SnapshotKey(cluster uint64, id string) string {
	return SnapshotPrefix + strconv.FormatUint(cluster, 10) + "/" + id
}

func validSnapshotID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Snapshot) validate() error {
	switch {
	case !validSnapshotID(s.ID):
		return fmt.Errorf("snapshot id %q", s.ID)
	case s.Cluster == 0:
		return errors.New("snapshot without cluster system identifier")
	case s.Type != SnapshotFull && s.Type != SnapshotIncremental:
		return fmt.Errorf("snapshot type %q", s.Type)
	case s.Type == SnapshotIncremental && s.Parent == "":
		return errors.New("incremental snapshot without parent")
	case len(s.Roots) == 0:
		return errors.New("snapshot without roots")
	}
	return nil
}

// DecodeSnapshot parses a snapshot's JSON (after decryption) and checks it
// against its object key.
func DecodeSnapshot(key string, b []byte) (*Snapshot, error) {
	var v struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, corrupt(key, "%v", err)
	}
	if v.Format > SnapshotFormat {
		return nil, &VersionError{Key: key, Version: v.Format, Supported: SnapshotFormat}
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, corrupt(key, "%v", err)
	}
	if err := s.validate(); err != nil {
		return nil, corrupt(key, "%v", err)
	}
	if SnapshotKey(s.Cluster, s.ID) != key {
		return nil, corrupt(key, "snapshot names itself %s", SnapshotKey(s.Cluster, s.ID))
	}
	return &s, nil
}

// createSnapshot writes the snapshot object create-only. Only Commit calls it.
func (r *Repo) createSnapshot(ctx context.Context, s *Snapshot) (string, error) {
	s.Format = SnapshotFormat
	if s.ID == "" {
		s.ID = NewSnapshotID(r.opts.Now())
	}
	if s.Host == "" {
		s.Host = r.opts.Host
	}
	s.Committed = r.opts.Now().UTC()
	if err := s.validate(); err != nil {
		return "", fmt.Errorf("commit snapshot: %w", err)
	}
	body, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	key := SnapshotKey(s.Cluster, s.ID)
	if err := r.putSealed(ctx, key, body, true); err != nil {
		return "", fmt.Errorf("commit snapshot %s: %w", key, err)
	}
	return key, nil
}

// LoadSnapshot reads one snapshot.
func (r *Repo) LoadSnapshot(ctx context.Context, cluster uint64, id string) (*Snapshot, error) {
	if !validSnapshotID(id) {
		return nil, fmt.Errorf("snapshot id %q is not valid", id)
	}
	return r.loadSnapshotKey(ctx, SnapshotKey(cluster, id))
}

func (r *Repo) loadSnapshotKey(ctx context.Context, key string) (*Snapshot, error) {
	b, err := r.getSealed(ctx, key, maxSnapshot)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", key, err)
	}
	return DecodeSnapshot(key, b)
}

// snapshotLoaders bounds parallel GETs when listing snapshots.
const snapshotLoaders = 8

// Snapshots loads the snapshots of a cluster (cluster 0: of all clusters),
// ordered by recorded stop time, then stop LSN (never by name).
func (r *Repo) Snapshots(ctx context.Context, cluster uint64) ([]*Snapshot, error) {
	prefix := SnapshotPrefix
	if cluster != 0 {
		prefix += strconv.FormatUint(cluster, 10) + "/"
	}
	var keys []string
	for oi, err := range r.store.List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		if strings.Count(strings.TrimPrefix(oi.Key, SnapshotPrefix), "/") == 1 {
			keys = append(keys, oi.Key)
		}
	}
	out := make([]*Snapshot, len(keys))
	errs := make([]error, len(keys))
	sem := make(chan struct{}, snapshotLoaders)
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = r.loadSnapshotKey(ctx, k)
		}()
	}
	wg.Wait()
	var res []*Snapshot
	for i, err := range errs {
		if errors.Is(err, storage.ErrNotFound) {
			continue // deleted meanwhile (retention)
		}
		if err != nil {
			return nil, err
		}
		res = append(res, out[i])
	}
	slices.SortFunc(res, func(a, b *Snapshot) int {
		return cmp.Or(a.StopTime.Compare(b.StopTime), cmp.Compare(a.StopLSN, b.StopLSN),
			cmp.Compare(a.Cluster, b.Cluster), strings.Compare(a.ID, b.ID))
	})
	return res, nil
}
