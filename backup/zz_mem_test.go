package backup

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"
)

func TestZZMem(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("ZZ_FILES"))
	c, a := newCluster(t, 15, nil)
	c.Exec(t, "CREATE DATABASE many")
	oid := c.QueryString(t, "SELECT oid FROM pg_database WHERE datname = 'many'")
	dir := filepath.Join(c.DataDir, "base", oid)
	st := time.Now()
	writeRelFiles(t, dir, 3000000000, n, 1)
	t.Logf("wrote %d files in %v", n, time.Since(st))
	r := newTestRepo(t, 32<<20)
	var peak uint64
	stop := make(chan bool)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak {
				peak = ms.HeapInuse
				f, _ := os.Create(fmt.Sprintf("/tmp/zzheap-%d.prof", n))
				pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
	}()
	opts := backupOpts(t, c, a)
	opts.Parallel = 2
	st = time.Now()
	mustBackup(t, r, opts)
	close(stop)
	t.Logf("full: %v, peak heap %d MiB", time.Since(st), peak>>20)
}
