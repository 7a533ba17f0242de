package backup

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
)

// waitArchived switches WAL on c and waits until the segment is archived.
func waitArchived(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for {
		last := c.QueryString(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if len(last) >= 24 && last[:24] >= seg {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("segment %s not archived (last %q)", seg, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPromotionMidChain: a chain on timeline 1, a restore of its
// incremental promoted at a point after it (timeline 2), written to and
// backed up incrementally: the parent is the timeline 1 snapshot before the
// branch, and the restore matches. Then timeline 1 goes on: its next
// incremental ignores the timeline 2 snapshot. PITFALLS: summaries of an
// abandoned timeline must not be used.
func TestPromotionMidChain(t *testing.T) {
	c, a := newCluster(t, 17, map[string]string{"summarize_wal": "on"})
	w := newWorkload(t, c, testSeed(t))
	r := newTestRepo(t, 1<<20)
	opts := backupOpts(t, c, a)
	mustBackup(t, r, opts)
	w.step()
	i1 := mustBackup(t, r, opts)
	c.Exec(t, "CREATE TABLE branch_marks (v text); INSERT INTO branch_marks VALUES ('before')")
	target := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	c.Exec(t, "INSERT INTO branch_marks VALUES ('after'); UPDATE grow SET payload = 'timeline 1 only'")
	waitArchived(t, c)

	b := restoreWith(t, r.Repo, i1.Snapshot, a, 17, map[string]string{"recovery_target_lsn": target,
		"recovery_target_action": "promote", "archive_mode": "on", "archive_command": a.archiveCommand(),
		"summarize_wal": "on"})
	if got := b.QueryString(t, "SELECT string_agg(v, ',') FROM branch_marks"); got != "before" {
		t.Fatalf("the branch has %q", got)
	}
	b.Exec(t, "CHECKPOINT")
	b.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 3 = 0")
	b.Exec(t, "INSERT INTO grow (payload) SELECT md5(g::text) FROM generate_series(1, 3000) g")
	want := testenv.DatabaseFingerprint(t, b)
	bopts := backupOpts(t, b, a)
	bres := mustBackup(t, r, bopts)
	if bres.Snapshot.Parent != i1.Snapshot.ID || bres.Snapshot.StopTimeline != 2 {
		t.Fatalf("backup of the branch: parent %s on timeline %d, want %s on 2", bres.Snapshot.Parent, bres.Snapshot.StopTimeline, i1.Snapshot.ID)
	}
	rb := restoreSnapshot(t, r.Repo, bres.Snapshot, a, 17, false)
	if got := testenv.DatabaseFingerprint(t, rb); got != want {
		t.Fatalf("restored branch backup: fingerprint %s, want %s", got, want)
	}
	rb.Stop()

	// Timeline 1 goes on; its chain skips the branch's snapshot.
	w.step()
	want1 := testenv.DatabaseFingerprint(t, c)
	i2 := mustBackup(t, r, opts)
	if i2.Snapshot.Parent != i1.Snapshot.ID {
		t.Fatalf("timeline 1 incremental has parent %s, want %s", i2.Snapshot.Parent, i1.Snapshot.ID)
	}
	r1 := restoreWith(t, r.Repo, i2.Snapshot, a, 17, map[string]string{"recovery_target": "immediate",
		"recovery_target_action": "promote", "recovery_target_timeline": "current"})
	if got := testenv.DatabaseFingerprint(t, r1); got != want1 {
		t.Fatalf("restored timeline 1 incremental: fingerprint %s, want %s", got, want1)
	}
}

// TestStandbyBackup backs up a streaming standby (full, then incremental)
// and restores it: the snapshot says BACKUP FROM: standby, and the backup
// waits for the primary to archive the WAL up to its stop.
func TestStandbyBackup(t *testing.T) {
	p, a := newCluster(t, 15, nil)
	testenv.PGBenchInit(t, p, 1)
	dir := filepath.Join(testenv.SharedDir(t), "standby")
	out, err := p.Command(t.Context(), p.ClientBin("pg_basebackup"), "-D", dir, "-R", "-X", "stream", "-c", "fast",
		"-h", "127.0.0.1", "-p", itoa(p.Port), "-U", "postgres").CombinedOutput()
	if err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	s := testenv.AdoptDataDir(t, 15, dir, testenv.PGConfig{Settings: map[string]string{"hot_standby": "on"}})
	if !s.InRecovery(t) {
		t.Fatal("the standby is not in recovery")
	}
	r := newTestRepo(t, 1<<20)
	backup := func() *Result {
		t.Helper()
		caughtUp(t, p, s)
		// The standby cannot switch WAL; the primary must archive the
		// segment that holds the backup's stop.
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go switchWAL(ctx, p)
		opts := backupOpts(t, s, a)
		opts.ArchiveWait = 2 * time.Minute
		return mustBackup(t, r, opts)
	}
	full := backup()
	if !strings.Contains(string(full.Snapshot.BackupLabel), "BACKUP FROM: standby") {
		t.Fatalf("backup_label:\n%s", full.Snapshot.BackupLabel)
	}
	testenv.PGBenchRun(t, p, testenv.PGBenchOptions{Transactions: 300})
	want := testenv.DatabaseFingerprint(t, p)
	inc := backup()
	if inc.Snapshot.Parent != full.Snapshot.ID || inc.Method != MethodBlockSummaries {
		t.Fatalf("standby incremental: parent %s by %s", inc.Snapshot.Parent, inc.Method)
	}
	rc := restoreSnapshot(t, r.Repo, inc.Snapshot, a, 15, false)
	if got := testenv.DatabaseFingerprint(t, rc); got != want {
		t.Fatalf("restored standby backup: fingerprint %s, want %s", got, want)
	}
}

// caughtUp waits until standby s has replayed everything primary p wrote.
func caughtUp(t *testing.T, p, s *testenv.Cluster) {
	t.Helper()
	want, err := pg.ParseLSN(p.QueryString(t, "SELECT pg_current_wal_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for {
		got, err := pg.ParseLSN(s.QueryString(t, "SELECT pg_last_wal_replay_lsn()"))
		if err == nil && got >= want {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("standby replayed %s of %s", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// switchWAL switches WAL on p every 300 ms until ctx ends.
func switchWAL(ctx context.Context, p *testenv.Cluster) {
	conn, err := p.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	for ctx.Err() == nil {
		conn.Exec(ctx, "SELECT pg_switch_wal()")
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}
