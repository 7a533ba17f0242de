package directio

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestReaderModes: CacheFirst (a --delta restore's compare) reads what the
// page cache holds from it and the rest with O_DIRECT; Direct (a backup)
// never reads a slot through the cache; Cached never reads direct. The
// bytes are the file's every way, up to its end.
func TestReaderModes(t *testing.T) {
	dir := t.TempDir()
	if !Supported(dir) {
		t.Skipf("%s does not take O_DIRECT", dir)
	}
	p := filepath.Join(dir, "16384")
	data := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{3}).Read(data)
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
	read := func(r *Reader, off int64, want []byte) {
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
	r := NewReader(f, p, CacheFirst)
	defer r.Close()
	read(r, slot, data[slot:2*slot])
	if cached, direct := r.Counts(); cached != slot || direct != 0 {
		t.Errorf("a cached slot: %d bytes from the cache, %d direct; want all from the cache", cached, direct)
	}

	// Evicted: from the disk, directly.
	evict(t, f, int64(len(data)))
	read(r, 2*slot, data[2*slot:3*slot])
	if cached, direct := r.Counts(); direct == 0 {
		t.Errorf("an evicted slot: %d bytes from the cache, none direct", cached)
	}
	// The end of the file: what there is, then io.EOF.
	read(r, 4*slot-8192, data[4*slot-8192:])

	// Without O_DIRECT: through the cache.
	evict(t, f, int64(len(data)))
	plain := NewReader(f, p, Cached)
	read(plain, 0, data[:slot])
	if _, direct := plain.Counts(); direct != 0 {
		t.Errorf("%d bytes read direct with direct I/O off", direct)
	}

	// Direct: a slot in the cache is read direct all the same, and a read
	// too small for O_DIRECT goes through the cache.
	d := NewReader(f, p, Direct)
	defer d.Close()
	read(d, 0, data[:slot])
	if cached, direct := d.Counts(); cached != 0 || direct != slot {
		t.Errorf("Direct, a cached slot: %d bytes from the cache, %d direct; want all direct", cached, direct)
	}
	small := make([]byte, 8192)
	if _, err := d.ReadAt(small, slot); err != nil || !bytes.Equal(small, data[slot:slot+8192]) {
		t.Fatalf("Direct, one page: %v or the bytes differ", err)
	}
	if cached, _ := d.Counts(); cached != 8192 {
		t.Errorf("Direct, one page: %d bytes from the cache, want 8192", cached)
	}
	read(d, 4*slot-8192, data[4*slot-8192:])
}

// evict drops f's pages from the page cache and waits until none of its
// size bytes is resident: a page still under the readahead that an
// earlier read started is not dropped (the test failed that way on a
// loaded machine, its "evicted" slot read from the cache).
func evict(t *testing.T, f *os.File, size int64) {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+int64(os.Getpagesize())-1)/int64(os.Getpagesize()))
	for range 100 {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(m))), uintptr(len(m)),
			uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); errno != 0 {
			t.Fatal(errno)
		}
		if !slices.ContainsFunc(vec, func(b byte) bool { return b&1 != 0 }) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Skip("the page cache keeps the file's pages: cannot test reads of evicted pages here")
}
