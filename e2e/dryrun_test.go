package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// dryRunPlan is the part of restore --dry-run --json the tests read.
type dryRunPlan struct {
	Snapshot string `json:"snapshot"`
	Timeline uint32 `json:"timeline"`
	Plan     struct {
		SnapshotReason string `json:"snapshot_reason"`
		WALFirst       string `json:"wal_first"`
		WALLast        string `json:"wal_last"`
		WALSegments    int64  `json:"wal_segments"`
		WALComplete    bool   `json:"wal_complete"`
		FetchBytes     int64  `json:"fetch_bytes"`
		FetchBlobs     int64  `json:"fetch_blobs"`
		WriteBytes     int64  `json:"write_bytes"`
		Space          []struct {
			Path      string `json:"path"`
			Available int64  `json:"available_bytes"`
			Needed    int64  `json:"needed_bytes"`
			Enough    bool   `json:"enough"`
		} `json:"space"`
		Estimate *struct {
			RestoreSeconds float64  `json:"restore_seconds"`
			ReplaySeconds  *float64 `json:"replay_seconds"`
			Basis          string   `json:"basis"`
		} `json:"estimate"`
		Problems []string `json:"problems"`
	} `json:"plan"`
}

func (e *restoreEnv) dryRun(dir string, wantCode int, args ...string) dryRunPlan {
	e.t.Helper()
	out, errs, code := e.tidemark(append(append([]string{"restore", "--dry-run", "--json", "--pgdata", dir}, e.repoArgs()...), args...)...)
	if code != wantCode {
		e.t.Fatalf("restore --dry-run %v: exit %d, want %d\n%s%s", args, code, wantCode, out, errs)
	}
	var p dryRunPlan
	if err := fromJSON(out, "restore_plan", &p); err != nil {
		e.t.Fatalf("restore --dry-run --json: %v\n%s", err, out)
	}
	return p
}

// TestRestoreDryRun: restore --dry-run against PostgreSQL and MinIO names
// the backup the restore then uses, the WAL it needs, what it fetches and
// writes (the real restore writes what was announced), the free space and
// an estimate (from the backup's rate, then from a drill's), writes
// nothing, and reports the refusals of bad setups (a directory in use, a
// segment missing from the archive) with exit 8 and the plan still
// printed.
func TestRestoreDryRun(t *testing.T) {
	e := backupEnv(t, true, 0)
	c := e.backupCluster(15, nil)
	e.heartbeatAgent(c)
	testenv.LoadRandomTable(t, c, "data", 20000)
	s := e.backup(c)
	workload(t, c, 6)
	switchAndWait(t, c)

	objects, _ := e.count("")
	dir := e.target("restored")
	p := e.dryRun(dir, 0)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the dry run created %s (%v)", dir, err)
	}
	if n, _ := e.count(""); n != objects {
		t.Errorf("the dry run changed the repository: %d objects, then %d", objects, n)
	}
	segSize := uint32(s.WALSegmentSize)
	if p.Snapshot != s.ID || p.Timeline != 1 || !strings.Contains(p.Plan.SnapshotReason, "newest backup") ||
		p.Plan.WALFirst != pg.SegmentName(1, pg.LSN(s.StartLSN).Segment(segSize), segSize) || p.Plan.WALSegments < 2 || !p.Plan.WALComplete ||
		p.Plan.FetchBytes <= 0 || p.Plan.FetchBlobs <= 0 || p.Plan.WriteBytes <= 0 || len(p.Plan.Problems) != 0 {
		t.Fatalf("plan: %+v", p)
	}
	if len(p.Plan.Space) != 1 || !p.Plan.Space[0].Enough || p.Plan.Space[0].Needed < p.Plan.WriteBytes || p.Plan.Space[0].Available <= 0 {
		t.Errorf("space: %+v", p.Plan.Space)
	}
	if est := p.Plan.Estimate; est == nil || est.RestoreSeconds <= 0 || !strings.Contains(est.Basis, "backup "+s.ID) || est.ReplaySeconds != nil {
		t.Errorf("estimate without a drill: %+v", est)
	}
	// The text form says the same.
	out, _, code := e.tidemark(append([]string{"restore", "--dry-run", "--pgdata", dir}, e.repoArgs()...)...)
	if code != 0 || !strings.Contains(out, "dry run: nothing written") || !strings.Contains(out, s.ID) || !strings.Contains(out, "all archived") {
		t.Errorf("restore --dry-run: exit %d\n%s", code, out)
	}

	// After a drill, its rates: replay is estimated too.
	if res := e.drill(c); res.code != 0 {
		t.Fatalf("drill: exit %d: %s", res.code, res.stderr)
	}
	// Inside the workload that followed the backup.
	target := s.StopTime.UTC().Add(time.Second).Format("2006-01-02 15:04:05.000000+00")
	p = e.dryRun(dir, 0, "--target-time", target)
	if est := p.Plan.Estimate; est == nil || !strings.Contains(est.Basis, "drill") || est.ReplaySeconds == nil {
		t.Errorf("estimate after a drill: %+v", est)
	}

	// The restore then does what was announced.
	var done struct {
		Snapshot     string `json:"snapshot"`
		WrittenBytes int64  `json:"written_bytes"`
		FetchedBlobs int64  `json:"fetched_blobs"`
	}
	if err := fromJSON(e.restore(dir, "--json"), "restore", &done); err != nil {
		t.Fatal(err)
	}
	// The plan counts global/pg_control (one blob, 8 KiB), which the
	// restore reads and writes apart from its counters.
	if done.Snapshot != p.Snapshot || done.FetchedBlobs+1 != p.Plan.FetchBlobs || done.WrittenBytes+8192 != p.Plan.WriteBytes {
		t.Errorf("restore used %s, fetched %d blobs, wrote %d bytes; the plan said %s, %d, %d", done.Snapshot, done.FetchedBlobs, done.WrittenBytes,
			p.Snapshot, p.Plan.FetchBlobs, p.Plan.WriteBytes)
	}

	// Bad setups: the directory is not empty; a segment recovery needs is
	// missing from the archive.
	p = e.dryRun(dir, 8)
	if len(p.Plan.Problems) != 1 || !strings.Contains(p.Plan.Problems[0], "not empty") || p.Plan.FetchBytes <= 0 {
		t.Errorf("dry run into a used directory: %+v", p.Plan)
	}
	missing := pg.SegmentName(1, pg.LSN(s.StopLSN).PrevSegment(segSize), segSize)
	key, err := walarchive.Key(s.Cluster, missing)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store().Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	p = e.dryRun(filepath.Join(e.shared, "other"), 8)
	if p.Plan.WALComplete || len(p.Plan.Problems) == 0 || !strings.Contains(strings.Join(p.Plan.Problems, "\n"), missing) {
		t.Errorf("dry run with %s missing: %+v", missing, p.Plan)
	}
}
