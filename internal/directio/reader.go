// Package directio reads and writes data files with O_DIRECT where the
// file system allows it, and through the page cache where it does not.
//
// A backup reads every byte of a cluster once, and a restore writes every
// byte once: through the page cache, the kernel spends more CPU filling
// and evicting the cache than the copy costs (on the benchmark VM a cold
// buffered read of 15 GB cost the backup 16 CPU-s in pread, 37% of its
// CPU), and the cache it fills is the one the database's own hot pages
// live in.
package directio

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Align is the alignment O_DIRECT needs of memory, offset and length: the
// largest logical block size in use (4 KiB drives).
const Align = 4096

// Min is the smallest transfer done with O_DIRECT: a direct transfer is
// synchronous, and scattered pages moved one by one that way are slower
// than through the page cache.
const Min = 256 << 10

// Aligned reports whether b can be read or written at off with O_DIRECT.
// Large heap allocations are aligned to Go's 8 KiB pages, so the slot
// buffers of backup and restore almost always are.
func Aligned(b []byte, off int64) bool {
	return len(b) >= Min && len(b)%Align == 0 && off%Align == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(b)))%Align == 0
}

// Mode says where a Reader takes its bytes from.
type Mode int

const (
	// Cached reads through the page cache only.
	Cached Mode = iota
	// CacheFirst reads what the page cache holds from it (preadv2 with
	// RWF_NOWAIT, which fails rather than wait for the disk) and the rest
	// with O_DIRECT: a --delta restore comparing a copy that a stopped
	// server may have left in the cache.
	//
	// A miss is not free of the cache, though: RWF_NOWAIT starts the
	// file's readahead of what it missed before failing, so on a cold copy
	// the O_DIRECT read of one slot runs beside the kernel's read of the
	// next few megabytes into the cache, and the slots after it are found
	// there. On the benchmark VM a delta restore over a cold 2.4 GiB copy
	// took 1.5-1.6 s this way. Through the cache alone it took 2.2 s (1.8
	// s of it system time) with 16 GiB of other files cached, against 1.5 s
	// this way. Asking mincore (which does no I/O) and reading each miss
	// with O_DIRECT alone was slower: 1.9-2.5 s. The restore reads the
	// copy in pieces of 64 MiB on every worker, each piece with its own
	// descriptor (so its own readahead): 2.1-2.2 s against 2.1-2.8 s a
	// file at a time, on a later run of the same benchmark.
	CacheFirst
	// Direct reads with O_DIRECT whatever the cache holds: a backup, which
	// reads each byte once. Asking the cache first would start its
	// readahead on every miss, and filling the cache is the cost this
	// avoids. The kernel writes back dirty cached pages of the range before
	// a direct read, so the bytes are as new as a cached read's.
	Direct
)

// Reader reads a file in the way its Mode says. Reads that O_DIRECT cannot
// take (unaligned, under Min) and files on file systems that refuse it (an
// old kernel, tmpfs) go through the cache. It is safe for concurrent use:
// a backup's workers read the items of one big file side by side.
type Reader struct {
	f        *os.File
	path     string
	open     sync.Mutex
	d        atomic.Pointer[os.File] // O_DIRECT, opened on first need
	noNowait atomic.Bool
	noDirect atomic.Bool
	// cached and direct count the bytes read each way.
	cachedBytes, directBytes atomic.Int64
}

// NewReader returns a Reader of f, which is open for reading at path (the
// O_DIRECT descriptor is a second open of it).
func NewReader(f *os.File, path string, m Mode) *Reader {
	r := &Reader{f: f, path: path}
	r.noNowait.Store(m != CacheFirst)
	r.noDirect.Store(m == Cached)
	return r
}

// ReadAt reads len(b) bytes at off, or up to the end of the file (io.EOF).
func (r *Reader) ReadAt(b []byte, off int64) (int, error) {
	done := 0
	if !r.noNowait.Load() {
		n, err := unix.Preadv2(int(r.f.Fd()), [][]byte{b}, off, unix.RWF_NOWAIT)
		switch {
		case err == nil:
			done = n
			r.cachedBytes.Add(int64(n))
			if n == 0 {
				return 0, io.EOF
			}
		case errors.Is(err, unix.EAGAIN):
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL):
			r.noNowait.Store(true)
		default:
			return 0, err
		}
	}
	for done < len(b) {
		rest, at := b[done:], off+int64(done)
		var n int
		var err error
		if d := r.direct(rest, at); d != nil {
			n, err = d.ReadAt(rest, at)
			if errors.Is(err, syscall.EINVAL) {
				r.noDirect.Store(true)
				continue
			}
			r.directBytes.Add(int64(n))
		} else {
			n, err = r.f.ReadAt(rest, at)
			r.cachedBytes.Add(int64(n))
		}
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Counts returns the bytes read through the cache and with O_DIRECT.
func (r *Reader) Counts() (cached, direct int64) { return r.cachedBytes.Load(), r.directBytes.Load() }

// direct returns the O_DIRECT descriptor when b can be read at off with
// it, opening it if need be; nil when b goes through the cache.
func (r *Reader) direct(b []byte, off int64) *os.File {
	if r.noDirect.Load() || !Aligned(b, off) {
		return nil
	}
	if d := r.d.Load(); d != nil {
		return d
	}
	r.open.Lock()
	defer r.open.Unlock()
	if d := r.d.Load(); d != nil || r.noDirect.Load() {
		return d
	}
	d, err := os.OpenFile(r.path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		r.noDirect.Store(true)
		return nil
	}
	r.d.Store(d)
	return d
}

// Close closes the O_DIRECT descriptor, if one was opened (not the file
// the Reader was made with). No read may run at the same time.
func (r *Reader) Close() error {
	if d := r.d.Swap(nil); d != nil {
		return d.Close()
	}
	return nil
}

// Supported reports whether the file system of dir takes O_DIRECT: it
// writes and removes a probe file there.
func Supported(dir string) bool {
	p := filepath.Join(dir, ".tidemark-direct-probe")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|syscall.O_DIRECT, 0o600)
	if err != nil {
		return false
	}
	defer os.Remove(p)
	buf := make([]byte, Min) // a large allocation: page-aligned
	_, err = f.WriteAt(buf[:Align], 0)
	return errors.Join(err, f.Close()) == nil
}
