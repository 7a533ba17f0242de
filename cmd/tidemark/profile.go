package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"time"
)

// profileDirEnv names a directory into which every tidemark process, the
// ones PostgreSQL starts (wal-push, wal-fetch) and the prefetcher
// included, writes a CPU profile and the heap profile of its largest heap,
// as <command>-<pid>.cpu.pprof and .heap.pprof (and .allocs.pprof, all
// allocations of the run): how the benchmarks find
// where time and memory go in processes they do not start themselves.
const profileDirEnv = "TIDEMARK_PROFILE_DIR"

// startProfiles starts the profiles profileDirEnv asks for; the returned
// function writes them.
func startProfiles(args []string) func() {
	dir := os.Getenv(profileDirEnv)
	if dir == "" {
		return func() {}
	}
	name := "tidemark"
	if len(args) > 1 {
		name = filepath.Base(args[1])
	}
	base := filepath.Join(dir, fmt.Sprintf("%s-%d", name, os.Getpid()))
	cpu, err := os.Create(base + ".cpu.pprof")
	if err == nil && pprof.StartCPUProfile(cpu) != nil {
		cpu.Close()
		cpu = nil
	}
	// The heap profile describes the heap as of the last collection:
	// taken whenever the heap in use has grown by a tenth past the largest
	// seen, the last one taken is the largest heap's.
	// It also keeps the peaks of the live heap (what the last collection
	// found reachable: the bounds at work, garbage excluded) and of all
	// the memory the runtime mapped, for mem.txt.
	stop, done := make(chan struct{}), make(chan []byte)
	var peakLive, peakTotal uint64
	go func() {
		sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"},
			{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/total:bytes"}}
		var peak uint64
		var prof []byte
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			rtmetrics.Read(sample)
			peakLive = max(peakLive, sample[1].Value.Uint64())
			peakTotal = max(peakTotal, sample[2].Value.Uint64())
			if v := sample[0].Value.Uint64(); v > peak+peak/10 {
				peak = v
				var b bytes.Buffer
				if pprof.Lookup("heap").WriteTo(&b, 0) == nil {
					prof = b.Bytes()
				}
			}
			select {
			case <-stop:
				done <- prof
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		close(stop)
		if prof := <-done; prof != nil {
			os.WriteFile(base+".heap.pprof", prof, 0o644)
		}
		// Everything allocated over the run: where the churn that the
		// collector lets pile up comes from.
		if f, err := os.Create(base + ".allocs.pprof"); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		os.WriteFile(base+".mem.txt", fmt.Appendf(nil, "heap_sys %d\nheap_inuse %d\nstack_sys %d\nsys %d\nnum_gc %d\npeak_live_heap %d\npeak_runtime_total %d\n",
			ms.HeapSys, ms.HeapInuse, ms.StackSys, ms.Sys, ms.NumGC, peakLive, peakTotal), 0o644)
	}
}
