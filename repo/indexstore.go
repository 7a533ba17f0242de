package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
)

// Object keys of the index.
const (
	indexPrefix = "index/"
	deltaPrefix = "index/delta/" // + BLAKE3 of the ciphertext
	genPrefix   = "index/gen/"   // + <seq, 10 digits>/ + part hash or "complete"
	genComplete = "complete"
	// genPartBlobs bounds the blobs in one generation part (6.5 MiB of
	// records), so no single index object is huge and a reader holds one
	// part's records at a time while it spills the rest (index.NewSpilling).
	// Parts written before held up to 1<<20; readers take any size.
	genPartBlobs = 1 << 17
	// maxIndexFile bounds a decoded index file in bytes.
	maxIndexFile = index.HeaderSize + (1<<20)*index.PackRecordSize + 2*genPartBlobs*index.BlobRecordSize
	// maxMarker bounds a generation marker in bytes.
	maxMarker = 64 << 20
	// loadAttempts: a reader that loses a race with compaction (an object it
	// listed was deleted) starts over this many times.
	loadAttempts = 5
	// compactLease is the lease scope compaction and full repair hold.
	compactLease = "index"
)

// genMarker is the object that completes a generation; it is written last.
type genMarker struct {
	Format  int       `json:"format"`
	Seq     uint64    `json:"seq"`
	Created time.Time `json:"created"`
	// Parts are the generation's index files.
	Parts []string `json:"parts"`
	// Covers are the delta keys merged into this generation. Readers skip
	// them; deltas not listed are newer and loaded on top.
	Covers []string `json:"covers"`
}

func genDir(seq uint64) string { return fmt.Sprintf("%s%010d/", genPrefix, seq) }

func (r *Repo) writeIndexFile(ctx context.Context, prefix string, f *index.File) (string, error) {
	ct, err := r.seal(f.Encode())
	if err != nil {
		return "", fmt.Errorf("seal index file: %w", err)
	}
	key := contentKey(prefix, ct)
	if err := r.putBytes(ctx, key, ct, false); err != nil {
		return "", fmt.Errorf("write index %s: %w", key, err)
	}
	return key, nil
}

func (r *Repo) readIndexFile(ctx context.Context, key string) (*index.File, error) {
	b, err := r.getSealed(ctx, key, maxIndexFile)
	if err != nil {
		return nil, err
	}
	f, err := index.Decode(b)
	if err != nil {
		return nil, &CorruptError{Key: key, Err: err}
	}
	return f, nil
}

// index returns the index writers deduplicate against: every pack but the
// quarantined ones. It loads it on first use.
func (r *Repo) index(ctx context.Context) (*index.Index, error) {
	v, err := r.view(ctx)
	return v.main, err
}

// indexView is what readers look blobs up in: the locations outside
// quarantined packs first, then those only in quarantined packs.
type indexView struct{ main, quarantined *index.Index }

func (v indexView) Lookup(id blob.ID) (index.Location, bool) {
	if loc, ok := v.main.Lookup(id); ok || v.quarantined == nil {
		return loc, ok
	}
	return v.quarantined.Lookup(id)
}

func (v indexView) Has(id blob.ID) bool {
	_, ok := v.Lookup(id)
	return ok
}

// view returns the index as readers see it, loading it on first use.
func (r *Repo) view(ctx context.Context) (indexView, error) {
	v, loaded, err := r.viewLocked(ctx)
	if loaded {
		r.reportIndexMemory()
	}
	return v, err
}

// viewLocked is view under idxMu; loaded says it loaded the index.
func (r *Repo) viewLocked(ctx context.Context) (v indexView, loaded bool, err error) {
	r.idxMu.Lock()
	defer r.idxMu.Unlock()
	if r.idxLoaded {
		return indexView{r.idx, r.qidx}, false, nil
	}
	if !r.quarantinesRead {
		qs, err := r.Quarantines(ctx)
		if err != nil {
			return indexView{}, false, err
		}
		r.addExcludedLocked(QuarantinedPacks(qs))
	}
	idx, qidx, _, err := r.loadIndexFiltered(ctx, r.exclude)
	if err != nil {
		return indexView{}, false, err
	}
	r.idx, r.qidx, r.idxLoaded = idx, qidx, true
	return indexView{idx, qidx}, true, nil
}

// indexState is what loadIndex read.
type indexState struct {
	gen    uint64   // 0: no complete generation
	deltas []string // deltas loaded (not covered by generation gen)
	// stale are objects a compaction that supersedes generation gen may
	// delete: deltas gen covers, and every object of older generations.
	// Generation gen's own objects are kept one more round, so that a
	// reader that picked gen just before a compaction can still finish.
	stale []string
	// mod are the listed objects' modification times (for the lock).
	mod map[string]time.Time
}

// ReloadIndex reloads the index from storage (after another process wrote
// to the repository).
func (r *Repo) ReloadIndex(ctx context.Context) error {
	r.idxMu.Lock()
	exclude := r.exclude
	r.idxMu.Unlock()
	idx, qidx, _, err := r.loadIndexFiltered(ctx, exclude)
	if err != nil {
		return err
	}
	r.idxMu.Lock()
	r.idx, r.qidx, r.idxLoaded = idx, qidx, true
	r.idxMu.Unlock()
	r.reportIndexMemory()
	return nil
}

// installUnfiltered makes idx, which holds every pack, this Repo's index,
// unless this process leaves quarantined packs out: then the next use
// reloads. The caller holds idxMu.
func (r *Repo) installUnfiltered(idx *index.Index) {
	if len(r.exclude) > 0 {
		r.idx, r.qidx, r.idxLoaded = nil, nil, false
		return
	}
	r.idx, r.qidx, r.idxLoaded = idx, nil, true
}

// IndexStats describes the loaded index.
type IndexStats struct {
	Blobs, Packs int
	MemBytes     int64
}

// IndexStats loads the index if needed and describes it.
func (r *Repo) IndexStats(ctx context.Context) (IndexStats, error) {
	idx, err := r.index(ctx)
	if err != nil {
		return IndexStats{}, err
	}
	return IndexStats{Blobs: idx.Len(), Packs: idx.PackCount(), MemBytes: idx.MemBytes()}, nil
}

// loadIndexFiltered reads the newest complete generation and every delta
// it does not cover, racing a compaction that deletes what it listed by
// starting over. The packs in drop (and their blobs) go to the second index
// instead of the first, so that another location of a blob stored twice
// takes their place in the first; the second is nil when drop is empty.
func (r *Repo) loadIndexFiltered(ctx context.Context, drop map[pack.ID]struct{}) (*index.Index, *index.Index, *indexState, error) {
	var err error
	for range loadAttempts {
		idx := r.newIndex()
		var qidx *index.Index
		if len(drop) > 0 {
			qidx = index.New()
		}
		var st *indexState
		st, err = r.loadIndexOnce(ctx, func(f *index.File) {
			kept, dropped := splitFile(f, drop)
			idx.AddFile(kept)
			if dropped != nil {
				qidx.AddFile(dropped)
			}
		})
		if err == nil {
			return idx, qidx, st, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, nil, nil, err
		}
		r.log.Debug("index object vanished while loading (compaction); reloading", "err", err)
	}
	return nil, nil, nil, fmt.Errorf("load index: objects keep vanishing (compaction running?): %w", err)
}

// loadIndexOnce reads the newest complete generation and the deltas it does
// not cover, and hands each index file to add.
func (r *Repo) loadIndexOnce(ctx context.Context, add func(*index.File)) (*indexState, error) {
	st := &indexState{mod: map[string]time.Time{}}
	var all []string
	for oi, err := range r.store.List(ctx, indexPrefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", indexPrefix, err)
		}
		all = append(all, oi.Key)
		st.mod[oi.Key] = oi.ModTime
	}
	// Newest complete generation.
	var marker *genMarker
	for _, k := range all {
		seq, name, ok := parseGenKey(k)
		if !ok || name != genComplete || seq <= st.gen {
			continue
		}
		b, err := r.getSealed(ctx, k, maxMarker)
		if err != nil {
			return nil, err
		}
		var m genMarker
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, corrupt(k, "%v", err)
		}
		if m.Format > FormatVersion {
			return nil, &VersionError{Key: k, Version: m.Format, Supported: FormatVersion}
		}
		if m.Seq != seq {
			return nil, corrupt(k, "marker of generation %d", m.Seq)
		}
		st.gen, marker = seq, &m
	}
	covered := make(map[string]bool)
	if marker != nil {
		for _, part := range marker.Parts {
			if !strings.HasPrefix(part, genDir(st.gen)) {
				return nil, corrupt(genDir(st.gen)+genComplete, "part %q outside its generation", part)
			}
			f, err := r.readIndexFile(ctx, part)
			if err != nil {
				return nil, err
			}
			add(f)
		}
		for _, c := range marker.Covers {
			covered[c] = true
		}
	}
	for _, k := range all {
		if strings.HasPrefix(k, deltaPrefix) {
			if covered[k] {
				st.stale = append(st.stale, k)
				continue
			}
			f, err := r.readIndexFile(ctx, k)
			if err != nil {
				return nil, err
			}
			add(f)
			st.deltas = append(st.deltas, k)
			continue
		}
		if seq, _, ok := parseGenKey(k); ok && seq < st.gen {
			st.stale = append(st.stale, k)
		}
	}
	return st, nil
}

func parseGenKey(k string) (seq uint64, name string, ok bool) {
	rest, found := strings.CutPrefix(k, genPrefix)
	if !found {
		return 0, "", false
	}
	num, name, found := strings.Cut(rest, "/")
	if !found || len(num) != 10 {
		return 0, "", false
	}
	seq, err := strconv.ParseUint(num, 10, 64)
	return seq, name, err == nil
}

// CompactStats reports what CompactIndex did.
type CompactStats struct {
	Generation uint64
	Blobs      int
	Parts      int
	Merged     int // deltas merged
	Deleted    int // objects deleted (superseded by the previous generation)
	// Locked are superseded objects left for a later compaction because
	// the repository's object lock still holds them.
	Locked int
}

// CompactIndex merges the newest generation and all deltas into a new
// generation: parts first, then the marker (create-only) that completes it,
// and only then deletes what the previous generation superseded (one
// generation of grace for readers). Readers running meanwhile see either the
// old or the new generation plus the deltas neither covers.
func (r *Repo) CompactIndex(ctx context.Context) (CompactStats, error) {
	l, err := r.AcquireLease(ctx, compactLease, lease.Options{Exclusive: true, Command: "index compaction"})
	if err != nil {
		return CompactStats{}, err
	}
	defer l.Release(context.WithoutCancel(ctx))
	idx, _, st, err := r.loadIndexFiltered(ctx, nil) // all packs: the stored index is for everyone
	if err != nil {
		return CompactStats{}, err
	}
	stats, err := r.writeGeneration(ctx, idx, st, st.deltas)
	if err != nil {
		return stats, err
	}
	r.idxMu.Lock()
	r.installUnfiltered(idx)
	r.idxMu.Unlock()
	r.reportIndexMemory()
	return stats, nil
}

// writeGeneration writes idx as generation st.gen+1 covering deltas, then
// deletes the superseded objects.
func (r *Repo) writeGeneration(ctx context.Context, idx *index.Index, st *indexState, covers []string) (CompactStats, error) {
	seq := st.gen + 1
	stats := CompactStats{Generation: seq, Blobs: idx.Len(), Merged: len(covers)}
	m := genMarker{Format: FormatVersion, Seq: seq, Created: r.opts.Now().UTC(), Covers: covers}
	files, err := idx.Files(genPartBlobs)
	if err != nil {
		return stats, fmt.Errorf("read the index to compact: %w", err)
	}
	for _, f := range files {
		key, err := r.writeIndexFile(ctx, genDir(seq), f)
		if err != nil {
			return stats, err
		}
		m.Parts = append(m.Parts, key)
	}
	stats.Parts = len(m.Parts)
	body, err := json.Marshal(&m)
	if err != nil {
		return stats, err
	}
	mkey := genDir(seq) + genComplete
	if err := r.putSealed(ctx, mkey, body, true); err != nil {
		return stats, fmt.Errorf("complete index generation %s: %w", mkey, err)
	}
	// The generation is complete. What the previous generation already
	// superseded can go now; the previous generation itself and the deltas
	// merged just now stay until the next compaction, so that a reader that
	// chose the previous generation a moment ago can still load it.
	// Objects still under the repository's lock stay until a later
	// compaction finds them stale and released.
	now := r.opts.Now()
	var old []string
	for _, k := range st.stale {
		if r.StillLocked(k, st.mod[k], now) {
			stats.Locked++
			continue
		}
		old = append(old, k)
	}
	if err := r.store.Delete(ctx, old...); err != nil && !IsLocked(err) {
		return stats, fmt.Errorf("delete superseded index objects: %w", err)
	}
	stats.Deleted = len(old)
	return stats, nil
}

// RebuildStats reports what RebuildIndex did.
type RebuildStats struct {
	Packs      int // pack objects found
	Indexed    int // packs added to the index (orphans, or all with Full)
	Blobs      int // blobs in the added packs
	Unreadable []string
	Generation uint64 // with Full: the generation written
}

// RebuildIndex ('tidemark repair index') reads the trailer of every pack the
// index does not know (for example one uploaded just before a kill -9, whose
// index delta was never written) and writes an index delta for them. With
// full set it reads every pack and replaces the whole index with a new
// generation built from pack trailers alone (entries for missing packs are
// dropped). Unreadable packs are reported, not fatal.
func (r *Repo) RebuildIndex(ctx context.Context, full bool) (RebuildStats, error) {
	var stats RebuildStats
	l, err := r.AcquireLease(ctx, compactLease, lease.Options{Exclusive: true, Command: "repair index"})
	if err != nil {
		return stats, err
	}
	defer l.Release(context.WithoutCancel(ctx))
	old, _, st, err := r.loadIndexFiltered(ctx, nil)
	if err != nil {
		return stats, err
	}
	fresh := r.newIndex()
	delta := &index.File{}
	for _, class := range []blob.Class{blob.ClassData, blob.ClassMeta} {
		for oi, err := range r.store.List(ctx, class.Prefix()+"/", "") {
			if err != nil {
				return stats, fmt.Errorf("list packs: %w", err)
			}
			c, id, perr := pack.ParseKey(oi.Key)
			if perr != nil || c != class {
				continue
			}
			stats.Packs++
			if !full && old.HasPack(id) {
				continue
			}
			p, entries, err := r.readPackTrailer(ctx, class, id, oi.Size)
			if err != nil {
				if errors.Is(err, ErrCorrupt) || errors.Is(err, pack.ErrFormat) {
					r.log.Warn("pack unreadable; not indexed", "pack", oi.Key, "err", err)
					stats.Unreadable = append(stats.Unreadable, oi.Key)
					continue
				}
				return stats, err
			}
			stats.Indexed++
			stats.Blobs += len(entries)
			if full {
				fresh.AddPack(p, entries)
				continue
			}
			n := uint32(len(delta.Packs))
			delta.Packs = append(delta.Packs, p)
			for _, e := range entries {
				delta.Blobs = append(delta.Blobs, index.Entry{ID: e.ID, Pack: n, Offset: e.Offset, Length: e.Length,
					RawLength: e.RawLength, Kind: e.Kind, Compression: e.Compression})
			}
		}
	}
	if full {
		cs, err := r.writeGeneration(ctx, fresh, st, st.deltas)
		stats.Generation = cs.Generation
		if err != nil {
			return stats, err
		}
		r.idxMu.Lock()
		r.installUnfiltered(fresh)
		r.idxMu.Unlock()
		r.reportIndexMemory()
		return stats, nil
	}
	if len(delta.Packs) > 0 {
		if _, err := r.writeIndexFile(ctx, deltaPrefix, delta); err != nil {
			return stats, err
		}
		old.AddFile(delta)
	}
	r.idxMu.Lock()
	r.installUnfiltered(old)
	r.idxMu.Unlock()
	r.reportIndexMemory()
	return stats, nil
}

// headerRead is the first ranged GET of a pack header; hybrid post-quantum
// stanzas are about 1.6 KiB each.
const headerRead = 16 << 10

// readPackTrailer reads a pack's header (to recover the payload key) and its
// trailer, with ranged GETs, not the whole pack.
func (r *Repo) readPackTrailer(ctx context.Context, class blob.Class, id pack.ID, size int64) (index.Pack, []pack.Entry, error) {
	key := pack.Key(class, id)
	p := index.Pack{ID: id, Class: class}
	var info agestream.Info
	for _, n := range []int64{headerRead, agestream.MaxHeaderPrefix} {
		n = min(n, size)
		prefix, err := r.getRange(ctx, key, 0, n)
		if err != nil {
			return p, nil, err
		}
		info, err = agestream.OpenHeader(prefix, n == size, r.identities...)
		if errors.Is(err, agestream.ErrShortHeader) && n < size {
			continue
		}
		if err != nil {
			return p, nil, corrupt(key, "age header: %v", err)
		}
		break
	}
	if info.PayloadOffset == 0 {
		return p, nil, corrupt(key, "age header longer than %d bytes", agestream.MaxHeaderPrefix)
	}
	plainSize, err := agestream.PlaintextSize(size - info.PayloadOffset)
	if err != nil || plainSize < pack.FooterSize || plainSize > pack.MaxSize {
		return p, nil, corrupt(key, "pack of %d bytes has no valid plaintext size (truncated?)", size)
	}
	p.PayloadKey, p.PayloadOffset, p.PlainSize = info.PayloadKey, uint32(info.PayloadOffset), uint32(plainSize)
	_, entries, err := r.packTail(ctx, &p)
	return p, entries, err
}

// packTail reads the end of pack p's plaintext that holds its trailer and
// footer, with a ranged GET of its last chunks (again if the trailer is
// longer), and decodes the trailer.
func (r *Repo) packTail(ctx context.Context, p *index.Pack) (tail []byte, entries []pack.Entry, err error) {
	key := p.Key()
	plainSize := int64(p.PlainSize)
	// Read the footer together with a guess of the trailer (the last two
	// chunks); read again if the trailer is longer.
	tailLen := min(plainSize, 2*agestream.ChunkSize)
	for {
		plain, first, err := r.readPlain(ctx, p, plainSize-tailLen, tailLen)
		if err != nil {
			return nil, nil, err
		}
		tail := bytes.Clone(plain[plainSize-tailLen-first:])
		r.readBufs.put(plain)
		tl, err := pack.ParseFooter(tail, plainSize)
		if err != nil {
			return nil, nil, &CorruptError{Key: key, Err: err}
		}
		if tl+pack.FooterSize > tailLen {
			tailLen = tl + pack.FooterSize
			continue
		}
		entries, err := pack.DecodeTrailer(tail, plainSize)
		if err != nil {
			return nil, nil, &CorruptError{Key: key, Err: err}
		}
		return tail, entries, nil
	}
}

func (r *Repo) getRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	rc, err := r.store.GetRange(ctx, key, off, n)
	if err != nil {
		return nil, packReadError(key, err)
	}
	defer rc.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, packReadError(key, err)
	}
	return b, nil
}
