package repo

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/keys"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

var ctx = context.Background()

func writeBlobs(t testing.TB, r *Repo, blobs map[blob.Kind][][]byte) map[blob.ID][]byte {
	t.Helper()
	w, err := r.NewWriter(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[blob.ID][]byte)
	for k, list := range blobs {
		for _, data := range list {
			id, err := w.Add(ctx, k, data)
			if err != nil {
				t.Fatal(err)
			}
			out[id] = data
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRoundtripEveryKind(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		f := initRepo(t, newStore(t))
		in := map[blob.Kind][][]byte{
			blob.KindSlot:    {compressible(blob.SlotSize, 1), randBytes(blob.SlotSize)},
			blob.KindPatch:   {compressible(8192, 2), randBytes(3 * 8192)},
			blob.KindFile:    {{}, []byte("x"), randBytes(100_000), compressible(70_000, 3)},
			blob.KindTree:    {[]byte(`{"tree":1}`), compressible(200_000, 4)},
			blob.KindFileMap: {randBytes(5000)},
		}
		ids := writeBlobs(t, f.repo, in)
		for _, r := range []*Repo{f.repo, f.reopen(t, Options{})} {
			for id, want := range ids {
				got, err := r.ReadBlob(ctx, id, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("blob %s: read %d bytes, want %d", id, len(got), len(want))
				}
			}
		}
		// Data and meta kinds land in their own packs.
		if len(keysUnder(t, f.store, "data/")) == 0 || len(keysUnder(t, f.store, "meta/")) == 0 {
			t.Fatal("want both data and meta packs")
		}
		// The same bytes under another kind are another blob.
		if f.repo.BlobID(blob.KindFile, []byte("x")) == f.repo.BlobID(blob.KindTree, []byte("x")) {
			t.Fatal("kind is not part of the blob ID")
		}
	})
}

func TestDedupUploadsNothing(t *testing.T) {
	c := &counting{Store: mem.New()}
	f := initRepo(t, c)
	data := randBytes(50_000)
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {data, data}})
	if len(ids) != 1 {
		t.Fatalf("%d ids for the same content", len(ids))
	}
	c.reset()
	w, err := f.repo.NewWriter(ctx, "second")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := w.Add(ctx, blob.KindFile, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.puts.Load() + c.creates.Load(); n != 0 {
		t.Fatalf("second run of the same content wrote %d objects", n)
	}
	if s := w.Stats(); s.NewBlobs != 0 || s.Blobs != 3 {
		t.Fatalf("stats %+v", s)
	}
	// A fresh process (reopened repo) dedups through the stored index.
	r2 := f.reopen(t, Options{})
	c.reset()
	writeBlobs(t, r2, map[blob.Kind][][]byte{blob.KindFile: {data}})
	if n := c.puts.Load() + c.creates.Load(); n != 0 {
		t.Fatalf("reopened repository wrote %d objects for known content", n)
	}
}

func TestZeroSlotSentinel(t *testing.T) {
	c := &counting{Store: mem.New()}
	f := initRepo(t, c)
	c.reset()
	w, _ := f.repo.NewWriter(ctx, "z")
	id, err := w.Add(ctx, blob.KindSlot, make([]byte, blob.SlotSize))
	if err != nil || id != blob.ZeroID {
		t.Fatalf("zero slot: %s, %v", id, err)
	}
	// A zero patch or a short zero slot is a normal blob.
	if id, _ := w.Add(ctx, blob.KindSlot, make([]byte, 8192)); id.IsZero() {
		t.Fatal("short zero slot got the sentinel")
	}
	w.Close(ctx)
	if n := len(keysUnder(t, c, "data/")); n != 1 {
		t.Fatalf("%d data packs, want 1 (for the short slot only)", n)
	}
	got, err := f.repo.ReadBlob(ctx, blob.ZeroID, nil)
	if err != nil || len(got) != blob.SlotSize || !bytes.Equal(got, make([]byte, blob.SlotSize)) {
		t.Fatalf("read zero slot: %d bytes, %v", len(got), err)
	}
	if ok, _ := f.repo.Has(ctx, blob.ZeroID); !ok {
		t.Fatal("zero sentinel not reported present")
	}
}

func TestIncompressibleStoredRaw(t *testing.T) {
	f := initRepo(t, mem.New())
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {randBytes(100_000), compressible(100_000, 9)}})
	raw, zst := 0, 0
	for id, data := range ids {
		loc, err := f.repo.Lookup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		switch loc.Compression {
		case blob.Raw:
			raw++
			if int(loc.Length) != len(data) {
				t.Fatalf("raw blob stored as %d bytes", loc.Length)
			}
		case blob.Zstd:
			zst++
			if int(loc.Length) >= len(data)/2 {
				t.Fatalf("compressible blob stored as %d bytes", loc.Length)
			}
		}
	}
	if raw != 1 || zst != 1 {
		t.Fatalf("raw %d zstd %d, want 1 and 1", raw, zst)
	}
}

func TestReadBlobIsOneRangedGET(t *testing.T) {
	c := &counting{Store: mem.New()}
	f := initRepo(t, c)
	var list [][]byte
	for i := range 40 {
		list = append(list, compressible(30_000+i, byte(i)))
	}
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindPatch: list})
	for id, want := range ids {
		c.reset()
		got, err := f.repo.ReadBlob(ctx, id, nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatal(err)
		}
		if c.ranges.Load() != 1 || c.gets.Load() != 0 || c.heads.Load() != 0 || c.lists.Load() != 0 {
			t.Fatalf("one blob read made %d ranged GETs, %d GETs, %d HEADs, %d LISTs",
				c.ranges.Load(), c.gets.Load(), c.heads.Load(), c.lists.Load())
		}
	}
}

func TestReadBlobsCoalesces(t *testing.T) {
	c, f, ids := threePacks(t)
	var all []blob.ID
	for id := range ids {
		all = append(all, id)
	}
	all = append(all, all[0], blob.ZeroID) // duplicates and the sentinel
	packs := len(keysUnder(t, c, "data/"))

	var mu sync.Mutex
	seen := make(map[blob.ID]int)
	c.reset()
	err := f.repo.ReadBlobs(ctx, all, func(id blob.ID, data []byte) error {
		mu.Lock()
		defer mu.Unlock()
		seen[id]++
		if want, ok := ids[id]; ok && !bytes.Equal(data, want) {
			return fmt.Errorf("blob %s differs", id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(ids)+1 {
		t.Fatalf("delivered %d distinct blobs, want %d", len(seen), len(ids)+1)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("blob %s delivered %d times", id, n)
		}
	}
	if got := c.ranges.Load(); got != int64(packs) {
		t.Fatalf("%d ranged GETs for %d packs: not coalesced", got, packs)
	}

	// With no gap allowed, every other blob of a pack needs its own GET.
	r2 := f.reopen(t, Options{CoalesceGap: 1})
	var some []blob.ID
	for i, id := range all[:len(ids)] {
		loc, _ := r2.Lookup(ctx, id)
		if i%2 == 0 && loc.Offset > 0 {
			some = append(some, id)
		}
	}
	c.reset()
	if err := r2.ReadBlobs(ctx, some, func(blob.ID, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if c.ranges.Load() <= int64(packs) {
		t.Fatalf("%d ranged GETs for %d scattered blobs", c.ranges.Load(), len(some))
	}

	// A missing blob fails before any read.
	c.reset()
	err = r2.ReadBlobs(ctx, []blob.ID{all[0], {1}}, func(blob.ID, []byte) error { return nil })
	if !errors.Is(err, ErrBlobNotFound) || c.ranges.Load() != 0 {
		t.Fatalf("missing blob: %v after %d GETs", err, c.ranges.Load())
	}
	// An error from fn stops the read and is returned.
	stop := errors.New("stop")
	if err := r2.ReadBlobs(ctx, all, func(blob.ID, []byte) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error: %v", err)
	}
}

func TestConcurrentAdds(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		f := initRepo(t, newStore(t))
		w, err := f.repo.NewWriter(ctx, "concurrent")
		if err != nil {
			t.Fatal(err)
		}
		const workers, each = 8, 60
		var mu sync.Mutex
		want := make(map[blob.ID][]byte)
		var wg sync.WaitGroup
		for g := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					// Half the content is shared between goroutines.
					seed := byte(i)
					if i%2 == 1 {
						seed = byte(g*each + i)
					}
					data := compressible(8192+int(seed)*7, seed)
					kind := blob.KindPatch
					if i%10 == 0 {
						kind = blob.KindTree
					}
					id, err := w.Add(ctx, kind, data)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					want[id] = data
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if s := w.Stats(); s.NewBlobs != int64(len(want)) || s.Blobs != workers*each {
			t.Fatalf("stats %+v, want %d new blobs", s, len(want))
		}
		r := f.reopen(t, Options{})
		for id, data := range want {
			got, err := r.ReadBlob(ctx, id, nil)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("blob %s: %v", id, err)
			}
		}
	})
}

func TestIdentities(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	other, _ := age.GenerateX25519Identity()
	_, err := Open(ctx, store, []age.Identity{other}, Options{})
	var nie *NoIdentityError
	if !errors.Is(err, ErrNoIdentity) || !errors.As(err, &nie) || nie.Keys != 1 {
		t.Fatalf("wrong identity: %v", err)
	}
	if !strings.Contains(err.Error(), "no identity matches this repository's keys") ||
		!strings.Contains(err.Error(), "tidemark key") {
		t.Fatalf("message does not say what to do: %v", err)
	}
	if _, err := Open(ctx, store, nil, Options{}); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("no identity: %v", err)
	}
	// Several identities: the matching one is found.
	if _, err := Open(ctx, store, []age.Identity{other, f.id}, Options{}); err != nil {
		t.Fatal(err)
	}
}

func TestKeyTypes(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	data := randBytes(1000)
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {data}})

	hyb, _ := age.GenerateHybridIdentity()
	hspec, err := ParseRecipient(hyb.Recipient().String(), "pq")
	if err != nil || hspec.Type != keys.TypeHybrid {
		t.Fatalf("hybrid recipient: %v %q", err, hspec.Type)
	}
	pspec, err := PassphraseKey("correct horse", "pass", 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []KeySpec{hspec, pspec} {
		if _, err := f.repo.AddKey(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	scrypt, _ := age.NewScryptIdentity("correct horse")
	wrongPass, _ := age.NewScryptIdentity("wrong")
	if _, err := Open(ctx, store, []age.Identity{wrongPass}, Options{}); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	for _, id := range []age.Identity{f.id, hyb, scrypt} {
		r, err := Open(ctx, store, []age.Identity{id}, Options{})
		if err != nil {
			t.Fatalf("%T: %v", id, err)
		}
		for bid := range ids {
			if _, err := r.ReadBlob(ctx, bid, nil); err != nil {
				t.Fatalf("%T: %v", id, err)
			}
		}
		r.Close()
	}
}

func TestKeyAddListRemove(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	list, err := f.repo.ListKeys(ctx)
	if err != nil || len(list) != 1 || !list[0].Current || list[0].RecipientType != keys.TypeX25519 ||
		list[0].Recipient != f.id.Recipient().String() || list[0].Label != "test" {
		t.Fatalf("list: %+v %v", list, err)
	}
	// The last key cannot go.
	if _, err := f.repo.RemoveKey(ctx, list[0].ID); !errors.Is(err, ErrLastKey) {
		t.Fatalf("removing the last key: %v", err)
	}
	id2, _ := age.GenerateHybridIdentity()
	spec, _ := ParseRecipient(id2.Recipient().String(), "second")
	env, err := f.repo.AddKey(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if list, _ = f.repo.ListKeys(ctx); len(list) != 2 {
		t.Fatalf("%d keys after add", len(list))
	}
	// Removing by prefix revokes the first key: it no longer opens.
	if _, err := f.repo.RemoveKey(ctx, f.res.KeyID[:6]); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, store, []age.Identity{f.id}, Options{}); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("revoked key still opens: %v", err)
	}
	r2, err := Open(ctx, store, []age.Identity{id2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if r2.KeyID() != env.ID {
		t.Fatalf("opened with key %s, want %s", r2.KeyID(), env.ID)
	}
	if _, err := r2.RemoveKey(ctx, env.ID); !errors.Is(err, ErrLastKey) {
		t.Fatalf("removing the last key: %v", err)
	}
	if _, err := r2.RemoveKey(ctx, "ffff"); err == nil {
		t.Fatal("removing an unknown key succeeded")
	}
}

func TestSecondInitRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		store := newStore(t)
		initRepo(t, store)
		id, _ := age.GenerateX25519Identity()
		spec, _ := ParseRecipient(id.Recipient().String(), "")
		_, _, err := Init(ctx, store, InitOptions{Key: spec})
		var ee *ExistsError
		if !errors.As(err, &ee) || !strings.Contains(err.Error(), "repository already exists at "+store.String()) {
			t.Fatalf("second init: %v", err)
		}
		if n := len(keysUnder(t, store, "keys/")); n != 1 {
			t.Fatalf("%d key files after a refused init", n)
		}
	})
}

func TestNotRepository(t *testing.T) {
	store := mem.New()
	id, _ := age.GenerateX25519Identity()
	_, err := Open(ctx, store, []age.Identity{id}, Options{})
	if !errors.Is(err, ErrNotRepository) || !strings.Contains(err.Error(), "no repository at mem://; run tidemark init") {
		t.Fatalf("open empty store: %v", err)
	}
}

func TestUnknownFormatVersion(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	var cfg map[string]any
	b, _ := readSmall(ctx, store, ConfigKey, maxConfigSize)
	json.Unmarshal(b, &cfg)
	cfg["format"] = FormatVersion + 1
	b, _ = json.Marshal(cfg)
	store.Put(ctx, ConfigKey, bytes.NewReader(b), int64(len(b)))
	_, err := Open(ctx, store, []age.Identity{f.id}, Options{})
	var ve *VersionError
	if !errors.As(err, &ve) || !errors.Is(err, ErrUnsupportedVersion) || !strings.Contains(err.Error(), "upgrade tidemark") {
		t.Fatalf("newer format: %v", err)
	}

	// A key file of a newer format that nothing else opens: upgrade, too.
	store2 := mem.New()
	f2 := initRepo(t, store2)
	key := keys.Prefix + f2.res.KeyID
	b, _ = readSmall(ctx, store2, key, keys.MaxEnvelopeSize)
	var env map[string]any
	json.Unmarshal(b, &env)
	env["format"] = keys.EnvelopeVersion + 1
	b, _ = json.Marshal(env)
	store2.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
	if _, err := Open(ctx, store2, []age.Identity{f2.id}, Options{}); !errors.As(err, &ve) || ve.Key != key {
		t.Fatalf("newer key file: %v", err)
	}
}

// onePack writes blobs into exactly one data pack and returns it with the
// blob IDs.
func onePack(t *testing.T, f *fixture) (string, map[blob.ID][]byte) {
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {randBytes(20_000), compressible(90_000, 5)}})
	packs := keysUnder(t, f.store, "data/")
	if len(packs) != 1 {
		t.Fatalf("%d packs", len(packs))
	}
	return packs[0], ids
}

func TestCorruptPack(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	key, ids := onePack(t, f)
	for id := range ids {
		loc, _ := f.repo.Lookup(ctx, id)
		// Flip a byte in the middle of the blob's ciphertext.
		off := int64(loc.Pack.PayloadOffset) + int64(loc.Offset) + int64(loc.Length)/2
		store.Corrupt(key, int(off))
		_, err := f.repo.ReadBlob(ctx, id, nil)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.Key != key || !strings.Contains(err.Error(), key) {
			t.Fatalf("flipped byte: %v", err)
		}
		store.Corrupt(key, int(off)) // flip back
		if _, err := f.repo.ReadBlob(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTruncatedAndMissingPack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		store := newStore(t)
		f := initRepo(t, store)
		key, ids := onePack(t, f)
		rc, _ := store.Get(ctx, key)
		var buf bytes.Buffer
		buf.ReadFrom(rc)
		rc.Close()
		whole := buf.Bytes()
		store.Put(ctx, key, bytes.NewReader(whole[:len(whole)/3]), int64(len(whole)/3))
		var last error
		for id := range ids {
			_, err := f.repo.ReadBlob(ctx, id, nil)
			if err != nil {
				last = err
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Key != key {
					t.Fatalf("truncated pack: %v", err)
				}
			}
		}
		if last == nil || !strings.Contains(last.Error(), "truncated") {
			t.Fatalf("truncated pack not reported: %v", last)
		}
		store.Delete(ctx, key)
		for id := range ids {
			_, err := f.repo.ReadBlob(ctx, id, nil)
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Key != key || !errors.Is(err, storage.ErrNotFound) ||
				!strings.Contains(err.Error(), "missing") {
				t.Fatalf("missing pack: %v", err)
			}
		}
	})
}

func TestPackNameIsCiphertextHash(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	key, _ := onePack(t, f)
	rc, _ := store.Get(ctx, key)
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	_, id, err := pack.ParseKey(key)
	if err != nil || pack.Sum(buf.Bytes()) != id {
		t.Fatalf("pack %s does not hash to its name: %v", key, err)
	}
}

func TestIndexBytesPerEntry(t *testing.T) {
	if index.EntryMemSize > 52 {
		t.Fatalf("index entry takes %d bytes in memory", index.EntryMemSize)
	}
}

// ReadBlobs decrypts a span chunk by chunk and hands each blob over as soon
// as it is in: blobs smaller than a chunk, blobs over several chunks, gaps
// between the blobs asked for (every other one skipped), each delivered
// intact; a flipped byte in the middle of a span fails that span with a
// *CorruptError after the blobs before it, and a truncated pack fails as
// truncated.
func TestReadBlobsStreamsSpans(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	var list [][]byte
	for i := range 24 {
		n := 3_000 + i*17 // several per chunk
		if i%3 == 0 {
			n = 2*agestream.ChunkSize + 5_000 + i // over three chunks
		}
		list = append(list, randBytes(n))
	}
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: list})
	var sorted []index.Location
	for id := range ids {
		loc, err := f.repo.Lookup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		sorted = append(sorted, loc)
	}
	slices.SortFunc(sorted, func(a, b index.Location) int {
		return cmp.Or(strings.Compare(a.Pack.Key(), b.Pack.Key()), cmp.Compare(a.Offset, b.Offset))
	})
	var some []blob.ID
	for i, l := range sorted {
		if i%2 == 1 {
			some = append(some, l.ID)
		}
	}
	read := func(want []blob.ID) (map[blob.ID]bool, error) {
		var mu sync.Mutex
		got := map[blob.ID]bool{}
		err := f.repo.ReadBlobs(ctx, want, func(id blob.ID, data []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if !bytes.Equal(data, ids[id]) {
				return fmt.Errorf("blob %s differs", id)
			}
			got[id] = true
			return nil
		})
		return got, err
	}
	for _, want := range [][]blob.ID{some, slices.Collect(maps.Keys(ids))} {
		got, err := read(want)
		if err != nil || len(got) != len(want) {
			t.Fatalf("read %d blobs: %d delivered, %v", len(want), len(got), err)
		}
	}

	// A flipped byte inside the last blob of a pack: what comes before it
	// in the span is delivered, the span fails.
	last := sorted[len(sorted)-1]
	key := last.Pack.Key()
	off := int(last.Pack.PayloadOffset) + int(last.Offset) + int(last.Length)/2
	store.Corrupt(key, off)
	var inPack []blob.ID
	// Blobs that end a whole 64 KiB encryption chunk or more before the
	// flipped byte are authenticated before it is reached; the others
	// share its chunk, which fails as a whole.
	before := 0
	for _, l := range sorted {
		if l.Pack.Key() == key {
			inPack = append(inPack, l.ID)
			if int(l.Offset)+int(l.Length)+2*(64<<10) <= int(last.Offset)+int(last.Length)/2 {
				before++
			}
		}
	}
	got, err := read(inPack)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Key != key || got[last.ID] || len(got) < before {
		t.Fatalf("flipped byte: %v, %d of %d delivered", err, len(got), len(inPack))
	}
	store.Corrupt(key, off)

	rc, err := store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	whole, _ := io.ReadAll(rc)
	rc.Close()
	cut := int64(last.Pack.PayloadOffset) + int64(last.Offset) + 10
	store.Put(ctx, key, bytes.NewReader(whole[:cut]), cut)
	_, err = read(inPack)
	if !errors.As(err, &ce) || ce.Key != key || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated pack: %v", err)
	}
}

// A writer fills packs of the repository's size when its memory holds two
// of them and a meta pack, smaller ones when it does not, and never packs
// below MinPackSize.
func TestPackTargetFitsPackMemory(t *testing.T) {
	for _, c := range []struct{ packSize, mem, want int64 }{
		{32 << 20, 128 << 20, 32 << 20},
		{32 << 20, DefaultPackMemory, 0},
		{1 << 20, DefaultPackMemory, 1 << 20},
		{32 << 20, 1 << 20, MinPackSize},
	} {
		r := &Repo{cfg: Config{PackSize: c.packSize}, opts: Options{PackMemory: c.mem}}
		got := r.packTarget()
		switch {
		case c.want != 0 && got != c.want:
			t.Errorf("pack size %d, memory %d: target %d, want %d", c.packSize, c.mem, got, c.want)
		case c.want == 0 && (got >= c.packSize || 2*packCap(got)+metaPackRoom > c.mem || 2*packCap(got+got/16)+metaPackRoom <= c.mem):
			t.Errorf("pack size %d, memory %d: target %d does not just fit two packs", c.packSize, c.mem, got)
		}
	}
}

// ReadPack streams a pack: every blob delivered in order and intact; a
// flipped byte in the payload fails authentication, one in the header
// (outside every chunk) fails the pack's name, a truncated pack and one
// with a byte appended fail on their length; each a *CorruptError naming
// the pack.
func TestReadPackStreams(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	var list [][]byte
	for i := range 12 {
		n := 5_000 + i
		if i%4 == 0 {
			n = agestream.ChunkSize + 7_000 + i
		}
		list = append(list, randBytes(n))
	}
	list = append(list, compressible(200_000, 3))
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: list})
	loc, err := f.repo.Lookup(ctx, list0(ids))
	if err != nil {
		t.Fatal(err)
	}
	p := loc.Pack
	key := p.Key()
	var got []blob.ID
	entries, err := f.repo.ReadPack(ctx, p, func(e pack.Entry, plain []byte) error {
		if want, ok := ids[e.ID]; ok && !bytes.Equal(plain, want) {
			return fmt.Errorf("blob %s differs", e.ID)
		}
		got = append(got, e.ID)
		return nil
	})
	if err != nil || len(got) != len(entries) || len(entries) == 0 {
		t.Fatalf("intact pack: %d of %d blobs, %v", len(got), len(entries), err)
	}

	rc, _ := store.Get(ctx, key)
	whole, _ := io.ReadAll(rc)
	rc.Close()
	check := func(what string, data []byte, want string) {
		t.Helper()
		store.Put(ctx, key, bytes.NewReader(data), int64(len(data)))
		_, err := f.repo.ReadPack(ctx, p, nil)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.Key != key || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a corrupt pack (%s)", what, err, want)
		}
	}
	flip := func(at int) []byte {
		b := bytes.Clone(whole)
		b[at] ^= 1
		return b
	}
	check("flipped payload byte", flip(int(p.PayloadOffset)+len(whole[p.PayloadOffset:])/2), "authentication")
	check("flipped header byte", flip(int(p.PayloadOffset)-20), "hash to")
	check("truncated", whole[:len(whole)-100], "truncated")
	check("one byte more", append(bytes.Clone(whole), 0), "longer")
	store.Put(ctx, key, bytes.NewReader(whole), int64(len(whole)))
}

// threePacks is a repository on a counting in-memory store holding 60
// incompressible file blobs of about 10 KB: about 600 KB, 3 packs of 256
// KiB.
func threePacks(t *testing.T) (*counting, *fixture, map[blob.ID][]byte) {
	c := &counting{Store: mem.New()}
	f := initRepo(t, c)
	var list [][]byte
	for i := range 60 {
		list = append(list, randBytes(10_000+i))
	}
	return c, f, writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: list})
}

func list0(ids map[blob.ID][]byte) blob.ID {
	for id := range ids {
		return id
	}
	return blob.ID{}
}

// TestOnIndexMemory: a Repo tells Options.OnIndexMemory what its index
// holds once it is loaded, again each time a writer's packs grew it by a
// step, and a reopened Repo tells what it loaded; the last value told is
// within a step of what the index holds (IndexStats).
func TestOnIndexMemory(t *testing.T) {
	f := initRepo(t, mem.New())
	var mu sync.Mutex
	var told []int64
	opts := Options{IndexSpillDir: "-", OnIndexMemory: func(n int64) {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, n)
	}}
	r := f.reopen(t, opts)
	var list [][]byte
	for i := range 60_000 {
		list = append(list, fmt.Appendf(nil, "blob %d", i))
	}
	writeBlobs(t, r, map[blob.Kind][][]byte{blob.KindFile: list})
	st, err := r.IndexStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := slices.Clone(told)
	mu.Unlock()
	t.Logf("told %v; the index holds %d bytes for %d blobs", got, st.MemBytes, st.Blobs)
	if len(got) < 3 || got[0] >= indexReportStep || !slices.IsSorted(got) {
		t.Fatalf("told %v while 60,000 blobs were added: want the loaded index, then growing steps", got)
	}
	if last := got[len(got)-1]; last <= st.MemBytes-indexReportStep || last >= st.MemBytes+indexReportStep {
		t.Errorf("last told %d, the index holds %d", last, st.MemBytes)
	}
	told = nil
	r2 := f.reopen(t, opts)
	if _, err := r2.IndexStats(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || told[0] < st.MemBytes/2 {
		t.Errorf("reopened: told %v, want once about %d", told, st.MemBytes)
	}
}

// TestSnapshotFormats: snapshots are written in SnapshotFormat; one of
// format 1 (before patch-runs blobs) still decodes, and one newer than
// this build knows is refused with the word to upgrade, never read as if
// its patch blobs were of a kind it knows.
func TestSnapshotFormats(t *testing.T) {
	s := &Snapshot{ID: "20260101T000000Z-0123abcd", Cluster: 42, Type: SnapshotFull, Roots: []blob.ID{{1}}}
	key := SnapshotKey(s.Cluster, s.ID)
	for _, format := range []int{1, SnapshotFormat, SnapshotFormat + 1} {
		s.Format = format
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeSnapshot(key, b)
		if format <= SnapshotFormat {
			if err != nil || got.Format != format {
				t.Errorf("format %d: %v", format, err)
			}
			continue
		}
		var ve *VersionError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), "upgrade tidemark") {
			t.Errorf("format %d: %v", format, err)
		}
	}
	f := initRepo(t, mem.New())
	w, err := f.repo.NewWriter(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	root, err := w.Add(ctx, blob.KindTree, []byte("tree"))
	if err != nil {
		t.Fatal(err)
	}
	snap := &Snapshot{Cluster: 42, Type: SnapshotFull, Roots: []blob.ID{root}, StartTime: time.Now(), StopTime: time.Now()}
	if _, err := w.Commit(ctx, snap, nil); err != nil {
		t.Fatal(err)
	}
	all, err := f.repo.Snapshots(ctx, 42)
	if err != nil || len(all) != 1 || all[0].Format != SnapshotFormat {
		t.Fatalf("committed snapshot: %v %+v", err, all)
	}
}
