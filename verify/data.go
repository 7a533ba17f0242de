package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/repo/refs"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// StateKey is the object that remembers how far the rotating subset got:
// sealed JSON, so that any host running verify continues the rotation.
const StateKey = repo.VerifyStateKey

// ppm is the unit of the rotation: millionths of the pack name space.
const ppm = 1_000_000

// Share is the part of the pack name space one run read: packs whose name,
// read as a fraction of the space of names, lies in [From, To). Pack names
// are hashes of their contents, so a share of the space is about that share
// of the packs. Successive runs continue where the last stopped; a cycle
// ends at 1 and the next starts again at 0, so ceil(1/N) runs of share N
// read every pack that existed when the cycle began, each once.
type Share struct {
	Cycle        int       `json:"cycle"`
	From         float64   `json:"from"`
	To           float64   `json:"to"`
	CycleStarted time.Time `json:"cycle_started"`
	// CycleComplete says this run finished a cycle: every pack that existed
	// when it began has been read since.
	CycleComplete bool `json:"cycle_complete"`
}

// state is the stored rotation: of the packs, by share of their name
// space; of the WAL archive, by a cursor in key order. The WAL fields came
// later: a record without them starts the WAL rotation at its beginning,
// and a tidemark that does not know them ignores them (and drops them when
// it writes the record, which only costs a reread).
type state struct {
	Format       int       `json:"format"`
	Cycle        int       `json:"cycle"`
	Done         int       `json:"done_ppm"` // [0, Done) of the current cycle was read
	CycleStarted time.Time `json:"cycle_started"`
	Updated      time.Time `json:"updated"`

	// WALCycle counts the rotations over the WAL archive (0 in a record
	// written before WAL was read: the first cycle).
	WALCycle int `json:"wal_cycle,omitempty"`
	// WALAfter is the key of the last WAL object read in the current
	// cycle; "" when the cycle starts.
	WALAfter        string    `json:"wal_after,omitempty"`
	WALCycleStarted time.Time `json:"wal_cycle_started,omitzero"`
}

func newState(now time.Time) *state {
	return &state{Format: 1, Cycle: 1, CycleStarted: now, WALCycle: 1, WALCycleStarted: now}
}

// packFrac places a pack name in [0, ppm).
func packFrac(id pack.ID) int {
	return int(binary.BigEndian.Uint64(id[:8]) / (math.MaxUint64/ppm + 1))
}

// indexedPack is a pack as the index describes it, with every entry any
// index file lists for it.
type indexedPack struct {
	p       index.Pack
	entries []index.Entry
}

// readData downloads and checks every pack, or, with st, the next share of
// them (st records how far it got; the caller saves it).
func (v *run) readData(ctx context.Context, st *state) error {
	files, err := v.r.IndexFiles(ctx)
	if err != nil {
		return fmt.Errorf("load the index: %w", err)
	}
	packs := map[pack.ID]*indexedPack{}
	for _, f := range files {
		for _, e := range f.Blobs {
			p := f.Packs[e.Pack]
			ip := packs[p.ID]
			if ip == nil {
				ip = &indexedPack{p: p}
				packs[p.ID] = ip
			}
			ip.entries = append(ip.entries, e)
		}
		for _, p := range f.Packs {
			if packs[p.ID] == nil {
				packs[p.ID] = &indexedPack{p: p}
			}
		}
	}
	v.rep.Stats.IndexedPacks = len(packs)
	orphans := 0
	for id := range v.objects {
		if packs[id] == nil {
			orphans++
		}
	}
	if orphans > 0 {
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%d pack(s) are in no index and were not read (an upload whose run was killed before indexing it): tidemark repair index indexes them, tidemark gc removes them", orphans))
	}

	lo, hi := 0, ppm
	if st != nil {
		lo = st.Done
		hi = min(ppm, lo+max(1, int(math.Round(v.o.Subset*ppm))))
		v.rep.Subset = &Share{Cycle: st.Cycle, From: float64(lo) / ppm, To: float64(hi) / ppm, CycleStarted: st.CycleStarted, CycleComplete: hi == ppm}
	}
	var todo []*indexedPack
	for id, ip := range packs {
		if _, ok := v.objects[id]; !ok {
			continue // the resolution check reports missing packs snapshots use
		}
		if f := packFrac(id); f >= lo && f < hi {
			todo = append(todo, ip)
		}
	}
	slices.SortFunc(todo, func(a, b *indexedPack) int { return bytes.Compare(a.p.ID[:], b.p.ID[:]) })

	var total int64
	for _, ip := range todo {
		total += ip.p.CipherSize()
	}
	v.o.Progress.Phase("read packs", total, "")
	failed := map[pack.ID]error{}
	var mu sync.Mutex
	work := make(chan *indexedPack)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for range v.o.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ip := range work {
				n, err := v.checkPack(ctx, ip)
				mu.Lock()
				v.rep.Stats.PacksRead++
				v.rep.Stats.BytesRead += ip.p.CipherSize()
				v.o.Progress.Add(ip.p.CipherSize())
				v.rep.Stats.BlobsRehashed += int64(n)
				v.rep.ReadPacks = append(v.rep.ReadPacks, ip.p.Key())
				if err != nil {
					if !errors.Is(err, repo.ErrCorrupt) {
						cancel(err)
					} else {
						failed[ip.p.ID] = err
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, ip := range todo {
		select {
		case work <- ip:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("read packs: %w", err)
	}
	slices.Sort(v.rep.ReadPacks)
	if err := v.reportFailed(ctx, packs, failed); err != nil {
		return err
	}
	what := fmt.Sprintf("all %d packs in the index", len(todo))
	if v.rep.Subset != nil {
		what = fmt.Sprintf("%d packs: the share %.1f%%..%.1f%% of the pack name space, cycle %d of the rotation (%s)", len(todo),
			100*v.rep.Subset.From, 100*v.rep.Subset.To, v.rep.Subset.Cycle, StateKey)
	}
	v.checked("pack contents: %s downloaded (%s): each pack's name equals the BLAKE3 of its bytes, every 64 KiB chunk authenticates (age), the trailer decodes and lists exactly the blobs the index places there, and each of %d blobs decompresses to the length recorded and hashes to its keyed ID, and each patch-runs blob expands to whole pages",
		what, bytesize.Format(v.rep.Stats.BytesRead), v.rep.Stats.BlobsRehashed)
	if st != nil {
		st.Done = hi
	}
	return nil
}

// checkPack reads one pack and compares its trailer with the index. It
// returns the number of blobs rehashed.
func (v *run) checkPack(ctx context.Context, ip *indexedPack) (int, error) {
	// A patch-runs blob must also expand to its pages: its keyed ID
	// proves the bytes a backup wrote, not that they are runs a restore
	// can lay out.
	var runs filemap.PatchRuns
	entries, err := v.r.ReadPack(ctx, ip.p, func(e pack.Entry, plain []byte) error {
		if e.Kind != blob.KindPatchRuns {
			return nil
		}
		if err := runs.Parse(plain); err != nil {
			return &repo.CorruptError{Key: ip.p.Key(), Err: fmt.Errorf("blob %s: %w", e.ID, err)}
		}
		return nil
	})
	if err != nil {
		return len(entries), err
	}
	byID := make(map[blob.ID]pack.Entry, len(entries))
	for _, e := range entries {
		byID[e.ID] = e
	}
	for _, e := range ip.entries {
		t, ok := byID[e.ID]
		switch {
		case !ok:
			return len(entries), &repo.CorruptError{Key: ip.p.Key(), Err: fmt.Errorf("the index places blob %s here, the trailer does not list it", e.ID)}
		case t.Offset != e.Offset || t.Length != e.Length || t.RawLength != e.RawLength || t.Kind != e.Kind || t.Compression != e.Compression:
			return len(entries), &repo.CorruptError{Key: ip.p.Key(), Err: fmt.Errorf("blob %s: the trailer says %s at %d (%d/%d bytes), the index %s at %d (%d/%d)",
				e.ID, t.Kind, t.Offset, t.Length, t.RawLength, e.Kind, e.Offset, e.Length, e.RawLength)}
		}
	}
	return len(entries), nil
}

// reportFailed turns failed packs into problems naming the snapshots that
// use them. A pack that vanished while verify ran and whose used blobs now
// resolve elsewhere was repacked by garbage collection: a note, not a
// problem.
func (v *run) reportFailed(ctx context.Context, packs map[pack.ID]*indexedPack, failed map[pack.ID]error) error {
	if len(failed) == 0 {
		return nil
	}
	inFailed := map[blob.ID]pack.ID{}
	for id := range failed {
		for _, e := range packs[id].entries {
			inFailed[e.ID] = id
		}
	}
	users := map[pack.ID][]string{}
	for _, s := range v.snaps {
		key := repo.SnapshotKey(s.Cluster, s.ID)
		hit := map[pack.ID]bool{}
		v.g.Walk(s.Roots, nil, func(id blob.ID, _ bool, _ *refs.Node) {
			if p, ok := inFailed[id]; ok && !hit[p] {
				hit[p] = true
				users[p] = append(users[p], key)
			}
		})
	}
	reloaded := false
	for id, err := range failed {
		key := packs[id].p.Key()
		if errors.Is(err, storage.ErrNotFound) {
			if len(users[id]) == 0 {
				v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s vanished while verify ran and no snapshot uses it (garbage collection)", key))
				continue
			}
			if !reloaded {
				if err := v.r.ReloadIndex(ctx); err != nil {
					return err
				}
				reloaded = true
			}
			if v.resolvesElsewhere(ctx, packs[id], id) {
				v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s was repacked by garbage collection while verify ran; its blobs resolve to other packs", key))
				continue
			}
		}
		p := v.problem("pack-data", key, errText(err), "")
		for _, s := range users[id] {
			v.problem(p.Kind, p.Object, p.Message, s)
		}
	}
	return nil
}

func (v *run) resolvesElsewhere(ctx context.Context, ip *indexedPack, gone pack.ID) bool {
	for _, e := range ip.entries {
		loc, err := v.r.Lookup(ctx, e.ID)
		if err != nil || loc.Pack.ID == gone {
			return false
		}
		oi, err := v.r.Store().Head(ctx, loc.Pack.Key())
		if err != nil || oi.Size != loc.Pack.CipherSize() {
			return false
		}
	}
	return true
}

func (v *run) loadState(ctx context.Context) (*state, error) {
	st := newState(v.o.Now().UTC())
	rc, err := v.r.Store().Get(ctx, StateKey)
	if errors.Is(err, storage.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", StateKey, err)
	}
	defer rc.Close()
	pr, err := v.r.Decrypt(rc)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(io.LimitReader(pr, 1<<20))
	}
	if err == nil {
		err = json.Unmarshal(b, st)
	}
	if err != nil || st.Done < 0 || st.Done >= ppm {
		// A damaged record only costs rereading: start a new cycle.
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s unreadable (%v); the rotation starts a new cycle", StateKey, err))
		return newState(v.o.Now().UTC()), nil
	}
	if st.WALCycle <= 0 || (st.WALAfter != "" && !strings.HasPrefix(st.WALAfter, walarchive.Prefix)) {
		// Written before WAL was read, or damaged: the WAL rotation starts.
		st.WALCycle, st.WALAfter, st.WALCycleStarted = 1, "", v.o.Now().UTC()
	}
	return st, nil
}

// saveState stores the rotation as readData and readWAL advanced it,
// starting a new cycle of either where one ended.
func (v *run) saveState(ctx context.Context, st *state, walCycleDone bool) error {
	st.Updated = v.o.Now().UTC()
	if st.Done >= ppm {
		st.Cycle++
		st.Done = 0
		st.CycleStarted = st.Updated
	}
	if walCycleDone {
		st.WALCycle++
		st.WALAfter = ""
		st.WALCycleStarted = st.Updated
	}
	body, err := json.Marshal(st)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	w, err := v.r.Encrypt(&buf)
	if err != nil {
		return err
	}
	w.Write(body)
	if err := w.Close(); err != nil {
		return err
	}
	if err := v.r.Store().Put(ctx, StateKey, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		return fmt.Errorf("write %s: %w", StateKey, err)
	}
	return nil
}
