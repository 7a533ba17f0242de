package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestBenchVerifyWAL measures how fast verify --read-data reads the WAL
// archive: the WAL of the restore benchmark (updates of an md5 table, about
// 1.6 GB by default), archived by wal-push into MinIO over TLS, after one
// small backup so that the packs read are few. Each run is timed whole and
// by the report's own clock of the WAL part; the table gives the median of
// three runs with their range, the CPU seconds per GiB of WAL, the requests
// and the peak memory.
//
// About 10 minutes on 2 cores. TIDEMARK_BENCH_WAL_MIB and
// TIDEMARK_BENCH_ROWS shrink it.
func TestBenchVerifyWAL(t *testing.T) {
	Enabled(t)
	rows := backupBenchInt(t, "TIDEMARK_BENCH_ROWS", 2_000_000)
	walWant := int64(backupBenchInt(t, "TIDEMARK_BENCH_WAL_MIB", 1600)) << 20

	srv := testenv.MinIOTLS(t)
	tm := NewTidemark(t, srv, srv.NewBucket(t))
	push := fmt.Sprintf("%s wal-push --repo %s --identity %s %%p", tm.Bin, shellQuote(strings.ReplaceAll(tm.URL, "%", "%%")), tm.Identity)
	c := testenv.NewCluster(t, testenv.PGConfig{Version: 15, Env: srv.Env(), Settings: map[string]string{
		"archive_mode": "on", "archive_command": push, "max_wal_size": "4GB", "shared_buffers": "256MB",
	}})
	rb := &restoreBench{t: t, c: c, tm: tm, shared: testenv.SharedDir(t)}
	rb.tidemark("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--full")
	start := pgLSN(t, c.QueryString(t, "SELECT pg_current_wal_lsn()"))
	testenv.LoadRandomTable(t, c, "md5", rows)
	for k := 0; pgLSN(t, c.QueryString(t, "SELECT pg_current_wal_lsn()"))-start < walWant; k++ {
		c.Exec(t, "UPDATE md5 SET payload = md5(payload) WHERE id % 4 = $1", k%4)
	}
	rb.switchAndWait()

	type report struct {
		Stats struct {
			PackBytes      int64   `json:"pack_bytes"`
			BytesRead      int64   `json:"bytes_read"`
			WALObjectsRead int64   `json:"wal_objects_read"`
			WALBytesRead   int64   `json:"wal_bytes_read"`
			WALStoredRead  int64   `json:"wal_stored_bytes_read"`
			WALPages       int64   `json:"wal_pages_checked"`
			WALRequests    int64   `json:"wal_requests"`
			WALReadSeconds float64 `json:"wal_read_seconds"`
		} `json:"stats"`
	}
	var walls, walSecs, cpus, rss []float64
	var last report
	for i := range 3 {
		settle()
		cmd := exec.CommandContext(t.Context(), tm.Bin, "verify", "--read-data", "--json", "--log-level", "warn")
		cmd.Env = append(os.Environ(), tm.Env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		m := Measure(cmd)
		if m.Err != nil {
			t.Fatalf("verify --read-data: %v\n%s", m.Err, errb.String())
		}
		if err := json.Unmarshal(out.Bytes(), &struct {
			Verify any `json:"verify"`
		}{&last}); err != nil || last.Stats.WALObjectsRead == 0 {
			t.Fatalf("verify --read-data --json: %v, %d WAL objects read\n%s", err, last.Stats.WALObjectsRead, out.String())
		}
		cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		walls = append(walls, m.Wall.Seconds())
		walSecs = append(walSecs, last.Stats.WALReadSeconds)
		cpus = append(cpus, cpu.Seconds())
		rss = append(rss, MiB(m.PeakTreeRSS))
		t.Logf("run %d: %s, WAL part %.1f s, CPU %s, peak RSS %.0f MiB", i+1, m.Wall.Round(10*time.Millisecond),
			last.Stats.WALReadSeconds, cpu.Round(10*time.Millisecond), MiB(m.PeakTreeRSS))
	}
	s := last.Stats
	med := func(v []float64) (float64, float64, float64) {
		w := slices.Clone(v)
		slices.Sort(w)
		return w[len(w)/2], w[0], w[len(w)-1]
	}
	tab := &Table{Title: "verify --read-data of the WAL archive, MinIO over TLS, --parallel 4 (median of 3 runs [min, max])",
		Columns: []string{"value", "min", "max"}}
	tab.Add("WAL objects read", "%.0f", float64(s.WALObjectsRead), math.NaN(), math.NaN())
	tab.Add("WAL read (MiB of segments)", "%.0f", MiB(s.WALBytesRead), math.NaN(), math.NaN())
	tab.Add("  stored (MiB)", "%.0f", MiB(s.WALStoredRead), math.NaN(), math.NaN())
	tab.Add("  page headers checked", "%.0f", float64(s.WALPages), math.NaN(), math.NaN())
	tab.Add("  requests (GET + LIST)", "%.0f", float64(s.WALRequests), math.NaN(), math.NaN())
	tab.Add("packs read (MiB)", "%.1f", MiB(s.BytesRead), math.NaN(), math.NaN())
	w, wlo, whi := med(walls)
	tab.Add("verify --read-data, whole (s)", "%.1f", w, wlo, whi)
	ws, wslo, wshi := med(walSecs)
	tab.Add("  of which reading the WAL (s)", "%.1f", ws, wslo, wshi)
	gib := float64(s.WALBytesRead) / (1 << 30)
	tab.Add("  WAL verified (MiB/s)", "%.0f", MiB(s.WALBytesRead)/ws, MiB(s.WALBytesRead)/wshi, MiB(s.WALBytesRead)/wslo)
	cp, cplo, cphi := med(cpus)
	tab.Add("CPU of the whole run per GiB of WAL (s)", "%.2f", cp/gib, cplo/gib, cphi/gib)
	r, rlo, rhi := med(rss)
	tab.Add("peak RSS (MiB)", "%.0f", r, rlo, rhi)
	tab.Print(os.Stdout)
}
