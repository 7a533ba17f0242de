package fs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t) })
}

func tempFiles(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.tmp)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestTempFilesNeverListed lists over and over while writers are busy: a
// temporary file must never show up as a key.
func TestTempFilesNeverListed(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	data := storagetest.Data(1, 256<<10)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := []string{"a", "b/c", "d/e/f"}[i%3]
				var err error
				if w%2 == 0 {
					err = s.Put(ctx, key, bytes.NewReader(data), int64(len(data)))
				} else {
					err = s.Create(ctx, key+"-"+string(rune('0'+w))+"-"+time.Now().Format("150405.000000000"),
						bytes.NewReader(data), int64(len(data)))
				}
				if err != nil && ctx.Err() == nil {
					t.Errorf("write: %v", err)
				}
			}
		})
	}
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		for info, err := range s.List(ctx, "", "") {
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(info.Key, TempDirName) {
				t.Fatalf("List showed temporary file %s", info.Key)
			}
		}
	}
	cancel()
	wg.Wait()
	if left := tempFiles(t, s); len(left) != 0 {
		t.Errorf("temporary files left after the writers finished: %q", left)
	}
}

func TestReservedKeys(t *testing.T) {
	s := newStore(t)
	err := s.Put(context.Background(), TempDirName+"/x", bytes.NewReader(nil), 0)
	if !errors.Is(err, storage.ErrPermanent) {
		t.Fatalf("put into the temp dir: %v, want a permanent error", err)
	}
	if got := storagetest.ListKeys(t, s, ".", ""); len(got) != 0 {
		t.Fatalf("list . = %q", got)
	}
}

// blockingReader delivers half of its data, then blocks until released.
type blockingReader struct {
	data    []byte
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(b.data)/2) {
		b.once.Do(func() { close(b.reached) })
		<-b.release
	}
	n := copy(p, b.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestLiveTempFileKept checks that stale-file cleanup does not remove the
// temporary file of a write still in progress, even when it is old.
func TestLiveTempFileKept(t *testing.T) {
	s := newStore(t)
	br := &blockingReader{data: storagetest.Data(2, 4<<20), reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error)
	go func() { done <- s.Put(context.Background(), "slow", br, int64(len(br.data))) }()
	<-br.reached
	if err := s.removeStale(0); err != nil {
		t.Fatal(err)
	}
	if n := len(tempFiles(t, s)); n != 1 {
		t.Fatalf("%d temporary files during the write, want 1", n)
	}
	close(br.release)
	if err := <-done; err != nil {
		t.Fatalf("put after cleanup ran: %v", err)
	}
	storagetest.ReadAll(t, s, "slow")
}

const crashEnv = "TIDEMARK_FS_CRASH_DIR"

// TestCrashHelper is the child of TestKillDuringPut: it starts a Put that
// never finishes and waits to be killed.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("helper process for TestKillDuringPut")
	}
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	br := &blockingReader{data: storagetest.Data(3, 8<<20), reached: make(chan struct{}), release: make(chan struct{})}
	go func() {
		<-br.reached
		os.WriteFile(filepath.Join(dir, "..", "ready"), nil, 0o666)
	}()
	s.Put(context.Background(), "victim", br, int64(len(br.data)))
	t.Fatal("put returned in the crash helper")
}

// TestKillDuringPut kills -9 a process in the middle of a Put over an
// existing object: the old object must stay whole, no partial one may
// appear, and the next New removes the leftover temporary file.
func TestKillDuringPut(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "repo")
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := []byte("the old object")
	storagetest.PutBytes(t, s, "victim", old)

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(root, "ready")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper never reached the middle of its put:\n%s", out.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	storagetest.ReadAll(t, s, "victim") // readable
	if got := storagetest.ReadAll(t, s, "victim"); !bytes.Equal(got, old) {
		t.Fatalf("after kill -9 mid-put the object holds %d bytes, want the old %d", len(got), len(old))
	}
	if got := storagetest.ListKeys(t, s, "", ""); !slices.Equal(got, []string{"victim"}) {
		t.Fatalf("list after kill -9 = %q", got)
	}
	left := tempFiles(t, s)
	if len(left) != 1 {
		t.Fatalf("expected the killed writer's temporary file, found %q", left)
	}
	// New only removes files older than staleAge; age this one.
	past := time.Now().Add(-2 * staleAge)
	if err := os.Chtimes(filepath.Join(s.tmp, left[0]), past, past); err != nil {
		t.Fatal(err)
	}
	s2, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if left := tempFiles(t, s2); len(left) != 0 {
		t.Fatalf("New left stale temporary files: %q", left)
	}
}

// TestErrors checks that local failures become clear, correctly classified
// storage errors.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	storagetest.PutBytes(t, s, "file", []byte("x"))

	// A key below an object: the path runs through a regular file.
	err := s.Put(ctx, "file/below", bytes.NewReader([]byte("y")), 1)
	if !errors.Is(err, storage.ErrPermanent) || storage.IsTransient(err) || !strings.Contains(err.Error(), "file/below") {
		t.Errorf("put below an object: %v", err)
	}

	if os.Geteuid() != 0 { // root ignores permissions
		ro := newStore(t)
		os.Chmod(ro.root, 0o555)
		t.Cleanup(func() { os.Chmod(ro.root, 0o755) })
		err := ro.Put(ctx, "newdir/x", bytes.NewReader([]byte("y")), 1)
		if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("put into a read-only directory: %v", err)
		}
	}

	full := s.wrap("put", "data/ab/cd", &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC})
	if !errors.Is(full, storage.ErrPermanent) || storage.IsTransient(full) ||
		!strings.Contains(full.Error(), "disk full") || !strings.Contains(full.Error(), "data/ab/cd") {
		t.Errorf("ENOSPC: %v", full)
	}
	if msg := full.Error(); strings.Contains(msg, "\n") {
		t.Errorf("multi-line error: %q", msg)
	}
}

// TestDiskFull writes to a tiny tmpfs when the test may mount one.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, 0) })
	s, err := New(mnt)
	if err != nil {
		t.Fatal(err)
	}
	data := storagetest.Data(4, 2<<20)
	err = s.Put(context.Background(), "big", bytes.NewReader(data), int64(len(data)))
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "big") {
		t.Fatalf("put on a full disk: %v", err)
	}
	if left := tempFiles(t, s); len(left) != 0 {
		t.Errorf("temporary files left on the full disk: %q", left)
	}
	if got := storagetest.ListKeys(t, s, "", ""); len(got) != 0 {
		t.Errorf("partial object visible: %q", got)
	}
}
