package restore

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCompareReader: a --delta restore reads what the page cache holds from
// it and the rest with O_DIRECT, and the bytes are the file's either way,
// up to its end.
func TestCompareReader(t *testing.T) {
	dir := t.TempDir()
	requireDirectIO(t, dir)
	p := filepath.Join(dir, "16384")
	data := randomBytes(3, 4<<20)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	const slot = 1 << 20
	b := make([]byte, slot)
	read := func(r *compareReader, off int64, want []byte) {
		t.Helper()
		n, err := r.ReadAt(b, off)
		if len(want) < slot && !errors.Is(err, io.EOF) || len(want) == slot && err != nil {
			t.Fatalf("read at %d: %d bytes, %v", off, n, err)
		}
		if !bytes.Equal(b[:n], want) {
			t.Fatalf("read at %d: the bytes differ from the file's", off)
		}
	}

	// Just written: in the cache.
	r := newCompareReader(f, p, true)
	defer r.Close()
	read(r, slot, data[slot:2*slot])
	if r.cached != slot || r.direct != 0 {
		t.Errorf("a cached slot: %d bytes from the cache, %d direct; want all from the cache", r.cached, r.direct)
	}

	// Evicted: from the disk, directly.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	read(r, 2*slot, data[2*slot:3*slot])
	if r.direct == 0 {
		t.Errorf("an evicted slot: %d bytes from the cache, none direct", r.cached)
	}
	// The end of the file: what there is, then io.EOF.
	read(r, 4*slot-8192, data[4*slot-8192:])

	// Without O_DIRECT: through the cache.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	plain := newCompareReader(f, p, false)
	read(plain, 0, data[:slot])
	if plain.direct != 0 {
		t.Errorf("%d bytes read direct with direct I/O off", plain.direct)
	}
}
