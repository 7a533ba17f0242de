// Package e2e holds tidemark's end-to-end tests: the built binary against
// real PostgreSQL servers and a real S3 server (internal/testenv).
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// TestWALArchive archives a cluster under a pgbench write load, first with
// wal-push alone, then with the agent, and fetches every archived segment
// back with wal-fetch: each is byte-identical to the one in pg_wal, and
// pg_waldump (PostgreSQL 15's, for 15) reads the fetched files.
func TestWALArchive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		segMiB  int
	}{
		{"pg15-1MiB", 15, 1},
		{"pg16-16MiB", 16, 16},
		{"pg17-16MiB", 17, 16},
		{"pg18-1MiB", 18, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testenv.MinIO(t)
			w := newS3Repo(t, srv)
			c := w.archivingCluster(t, tc.version, tc.segMiB, nil)
			testenv.PGBenchInit(t, c, 1)

			// Without an agent: wal-push uploads itself.
			testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Jobs: 2, Transactions: 400})
			last := switchWAL(t, c)
			waitArchived(t, c, last)

			// With the agent: wal-push asks it.
			a := w.startAgent(t, c)
			testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Jobs: 2, Transactions: 400})
			for range 3 {
				last = switchWAL(t, c)
			}
			waitArchived(t, c, last)
			a.stop(t)
			if !strings.Contains(a.log.String(), "answered wal-push") || !strings.Contains(a.log.String(), "ok=true") {
				t.Errorf("the agent answered no wal-push:\n%s", a.log.String())
			}
			// Segments pgbench filled were compressed as PostgreSQL wrote
			// them (fetchAndCompare below proves the result). Its few MiB
			// of WAL complete no 1 MiB piece of a 16 MiB segment.
			if tc.segMiB == 1 && !regexp.MustCompile(`msg=archived .* ahead=[1-9]`).MatchString(a.log.String()) {
				t.Errorf("no segment took pieces compressed ahead:\n%s", a.log.String())
			}
			if s := stats(t, c); s.failed != 0 {
				t.Errorf("archive_command failed %d times (last %s)", s.failed, s.lastFailed)
			}

			l := w.list(t, c)
			checkNoGaps(t, l, last)
			fetchAndCompare(t, w, c, l)
			checkSummaries(t, w, c, l)
		})
	}
}

// checkSummaries checks that wal-push and the agent wrote a block summary
// beside every segment they archived, and that it passes its MAC and says
// what the segment's WAL holds.
func checkSummaries(t *testing.T, w *walRepo, c *testenv.Cluster, l listing) {
	t.Helper()
	segSize := l.SegSize
	first, _ := pg.ParseWALFileName(l.Timelines[0].First)
	lastf, _ := pg.ParseWALFileName(l.Timelines[0].Last)
	from, _ := first.SegNo(segSize)
	to, _ := lastf.SegNo(segSize)
	sysid, err := strconv.ParseUint(l.SystemID, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	var records, blocks int64
	for seg := from; seg <= to; seg++ {
		s, err := w.arch.ReadSummary(t.Context(), sysid, 1, seg, segSize)
		if err != nil {
			t.Fatalf("block summary of segment %d: %v", seg, err)
		}
		if !s.Complete || s.Major != c.Version {
			t.Errorf("summary %s: complete %v (%s), PostgreSQL %d", s.Name(), s.Complete, s.Reason, s.Major)
		}
		records += s.Records
		blocks += int64(s.Blocks())
	}
	if records == 0 || blocks == 0 {
		t.Errorf("the summaries of %d segments hold %d records and %d blocks", to-from+1, records, blocks)
	}
	t.Logf("%d segments summarized: %d records, %d block references", to-from+1, records, blocks)
}

// fetchAndCompare fetches every archived segment of timeline 1 with
// wal-fetch and compares it with the original in pg_wal.
func fetchAndCompare(t *testing.T, w *walRepo, c *testenv.Cluster, l listing) {
	t.Helper()
	segSize := l.SegSize
	first, err := pg.ParseWALFileName(l.Timelines[0].First)
	if err != nil {
		t.Fatal(err)
	}
	lastf, _ := pg.ParseWALFileName(l.Timelines[0].Last)
	from, _ := first.SegNo(segSize)
	to, _ := lastf.SegNo(segSize)
	out := testenv.SharedDir(t)
	spool := filepath.Join(testenv.SharedDir(t), "spool")
	t.Cleanup(func() { stopPrefetcher(t, spool) })
	compared := 0
	for seg := from; seg <= to; seg++ {
		name := pg.SegmentName(1, seg, segSize)
		dest := filepath.Join(out, name)
		r := w.run(t, c.DataDir, nil, "wal-fetch", "--spool-dir", spool, name, dest)
		if r.code != 0 {
			t.Fatalf("wal-fetch %s: exit %d: %s", name, r.code, r.stderr)
		}
		got, err := os.ReadFile(dest)
		if err != nil {
			t.Fatal(err)
		}
		orig, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", name))
		if err != nil {
			t.Fatalf("the original of %s is gone from pg_wal: %v", name, err)
		}
		if !bytes.Equal(got, orig) {
			t.Fatalf("fetched %s differs from the original", name)
		}
		compared++
	}
	t.Logf("%d segments fetched back byte-identical", compared)
	if waldump, ok := c.OwnClientBin("pg_waldump"); ok {
		cmd := c.Command(t.Context(), waldump, "--quiet", "-p", out,
			pg.SegmentName(1, from, segSize), pg.SegmentName(1, to, segSize))
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pg_waldump of the fetched segments: %v\n%s", err, msg)
		}
		t.Logf("pg_waldump read %s .. %s", pg.SegmentName(1, from, segSize), pg.SegmentName(1, to, segSize))
	}
}

// TestWALRecovery proves wal-fetch and its prefetch in real recoveries of a
// pg_basebackup while the source writes on. Copy 1 recovers to the end of
// the archive and has the source's data; promoted, it archives timeline 2
// and 00000002.history into the same repository. Copy 2, from the same base
// backup, recovers to a named restore point: PostgreSQL learns from
// wal-fetch that timeline 2 is taken and picks 3, and writes a history file
// whose switch points go backwards, which is archived as it is.
func TestWALRecovery(t *testing.T) {
	srv := testenv.MinIO(t)
	w := newS3Repo(t, srv)
	src := w.archivingCluster(t, 15, 1, nil)
	w.startAgent(t, src)
	testenv.PGBenchInit(t, src, 2)

	target := filepath.Join(testenv.SharedDir(t), "copy1")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	bb := src.Command(ctx, src.ClientBin("pg_basebackup"), "-D", target, "-X", "none", "-c", "fast", "--no-sync")
	if out, err := bb.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	target2 := filepath.Join(testenv.SharedDir(t), "copy2")
	if out, err := exec.Command("cp", "-a", target, target2).CombinedOutput(); err != nil {
		t.Fatalf("copy the base backup: %v\n%s", err, out)
	}
	testenv.PGBenchRun(t, src, testenv.PGBenchOptions{Clients: 2, Jobs: 2, Transactions: 500})
	atPoint := testenv.DatabaseFingerprint(t, src)
	src.Exec(t, "SELECT pg_create_restore_point('e2e_point')")
	testenv.LoadRandomTable(t, src, "after_point", 20000)
	last := switchWAL(t, src)
	waitArchived(t, src, last)
	atEnd := testenv.DatabaseFingerprint(t, src)

	// Copy 1: to the end of the archive, then it archives its own WAL.
	copy1 := recoverCopy(t, w, target, nil)
	if got := testenv.DatabaseFingerprint(t, copy1); got != atEnd {
		t.Fatalf("copy 1 differs from the source:\nsource %v\ncopy %v", testenv.TableChecksums(t, src), testenv.TableChecksums(t, copy1))
	}
	serverLog := copy1.LogTail(100000)
	fromSpool, fromArchive := strings.Count(serverLog, "source=spool"), strings.Count(serverLog, "source=archive")
	if fromSpool == 0 {
		t.Errorf("recovery never read a prefetched segment (%d from the archive)", fromArchive)
	}
	// The fast path: a warm spool answers without opening the repository.
	if !strings.Contains(serverLog, `repository="not opened"`) {
		t.Errorf("no spooled segment was served without opening the repository (%d from the spool)", fromSpool)
	}
	logb, _ := os.ReadFile(target + ".tidemark-spool/prefetch.log")
	if !strings.Contains(string(logb), "prefetcher started") {
		t.Errorf("no prefetcher ran during recovery; its log:\n%s", logb)
	}
	t.Logf("copy 1 recovered to %s: %d files from the spool, %d fetched directly", last, fromSpool, fromArchive)
	if tli := copy1.QueryString(t, "SELECT timeline_id FROM pg_control_checkpoint()"); tli != "2" {
		t.Fatalf("copy 1 is on timeline %s, want 2", tli)
	}
	waitArchived(t, copy1, switchWAL(t, copy1))

	// Copy 2: to the restore point.
	copy2 := recoverCopy(t, w, target2, map[string]string{
		"recovery_target_name":   "e2e_point",
		"recovery_target_action": "promote",
	})
	if got := testenv.DatabaseFingerprint(t, copy2); got != atPoint {
		t.Fatalf("copy 2 differs from the source at the restore point")
	}
	if tli := copy2.QueryString(t, "SELECT timeline_id FROM pg_control_checkpoint()"); tli != "3" {
		t.Fatalf("copy 2 is on timeline %s, want 3 (2 is archived)", tli)
	}
	waitArchived(t, copy2, switchWAL(t, copy2))

	l := w.list(t, src)
	var backup int
	history := map[int]bool{}
	for _, tl := range l.Timelines {
		backup += len(tl.Backup)
		history[tl.Timeline] = tl.History
	}
	if backup == 0 || !history[2] || !history[3] || l.Gaps != 0 {
		t.Fatalf("archive: %d .backup, history %v, %d gaps: %+v", backup, history, l.Gaps, l.Timelines)
	}
	// The archived history files are PostgreSQL's, byte for byte.
	for _, c := range []*testenv.Cluster{copy1, copy2} {
		name := fmt.Sprintf("%08X.history", map[*testenv.Cluster]int{copy1: 2, copy2: 3}[c])
		dest := filepath.Join(testenv.SharedDir(t), "RECOVERYHISTORY")
		if r := w.run(t, c.DataDir, nil, "wal-fetch", "--no-spool", name, dest); r.code != 0 {
			t.Fatalf("fetch %s: exit %d: %s", name, r.code, r.stderr)
		}
		if !bytes.Equal(mustRead(t, dest), mustRead(t, filepath.Join(c.DataDir, "pg_wal", name))) {
			t.Fatalf("the fetched %s differs", name)
		}
	}
}

// TestWALPromotedStandby: a streaming standby that archives is promoted;
// the last, incomplete segment of its old timeline is archived as a
// .partial beside the segments, which wal-fetch serves only with --partial.
func TestWALPromotedStandby(t *testing.T) {
	w := newFSRepo(t)
	primary := w.archivingCluster(t, 15, 1, nil)
	primary.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
	waitArchived(t, primary, switchWAL(t, primary))

	dir := filepath.Join(testenv.SharedDir(t), "standby")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	bb := primary.Command(ctx, primary.ClientBin("pg_basebackup"), "-D", dir, "-X", "stream", "-R", "-c", "fast", "--no-sync")
	if out, err := bb.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	standby := testenv.AdoptDataDir(t, 15, dir, testenv.PGConfig{Env: w.env, Settings: map[string]string{
		"archive_mode":    "on",
		"archive_command": w.bin + " wal-push %p",
		"restore_command": w.bin + " wal-fetch --no-spool %f %p",
	}})
	primary.Exec(t, "INSERT INTO t SELECT generate_series(1, 1000)")
	want := primary.QueryString(t, "SELECT pg_current_wal_lsn()")
	waitUntil(t, 2*time.Minute, "the standby to replay "+want, func() bool {
		return standby.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", want) == "t"
	})
	standby.Promote()
	waitArchived(t, standby, switchWAL(t, standby))

	l := w.list(t, primary)
	var partial string
	for _, tl := range l.Timelines {
		if tl.Timeline == 1 && len(tl.Partial) > 0 {
			partial = tl.Partial[0]
		}
	}
	if partial == "" || l.Gaps != 0 {
		t.Fatalf("no .partial archived, or gaps: %+v", l.Timelines)
	}
	seg := strings.TrimSuffix(partial, ".partial")
	dest := filepath.Join(testenv.SharedDir(t), "RECOVERYXLOG")
	if r := w.run(t, standby.DataDir, nil, "wal-fetch", "--no-spool", partial, dest); r.code != 1 {
		t.Fatalf("wal-fetch %s without --partial: exit %d: %s", partial, r.code, r.stderr)
	}
	// The primary has not completed that segment: only the partial exists.
	if r := w.run(t, standby.DataDir, nil, "wal-fetch", "--no-spool", seg, dest); r.code != 1 {
		t.Fatalf("wal-fetch %s served something without --partial: exit %d: %s", seg, r.code, r.stderr)
	}
	if r := w.run(t, standby.DataDir, nil, "wal-fetch", "--no-spool", "--partial", seg, dest); r.code != 0 {
		t.Fatalf("wal-fetch --partial %s: exit %d: %s", seg, r.code, r.stderr)
	}
	orig := mustRead(t, filepath.Join(standby.DataDir, "pg_wal", partial))
	if !bytes.Equal(mustRead(t, dest), orig) {
		t.Fatal("the fetched partial segment differs from the standby's")
	}
}

// recoverCopy starts PostgreSQL on a base backup with restore_command =
// tidemark wal-fetch (debug logging, so that the server log says where each
// file came from) and waits until it has promoted. Once promoted it archives
// into w.
func recoverCopy(t *testing.T, w *walRepo, dir string, settings map[string]string) *testenv.Cluster {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]string{
		"restore_command": w.bin + " wal-fetch %f %p",
		"archive_mode":    "on",
		"archive_command": w.bin + " wal-push %p",
	}
	for k, v := range settings {
		cfg[k] = v
	}
	c := testenv.AdoptDataDir(t, 15, dir, testenv.PGConfig{Settings: cfg,
		Env: append(append([]string(nil), w.env...), "TIDEMARK_LOG_LEVEL=debug")})
	t.Cleanup(func() { stopPrefetcher(t, dir+".tidemark-spool") })
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if err := c.WaitRecoveryDone(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestWALPushS3Outage: with the S3 server down, wal-push fails, PostgreSQL
// keeps the segments and retries; once the server is back, archiving
// catches up without a gap.
func TestWALPushS3Outage(t *testing.T) {
	srv := testenv.MinIO(t)
	w := newS3Repo(t, srv)
	c := w.archivingCluster(t, 15, 1, nil, "TIDEMARK_RETRY_FOR=2s")
	first := switchWAL(t, c)
	waitArchived(t, c, first)

	srv.Stop()
	var last string
	for range 5 {
		c.Exec(t, "INSERT INTO walswitch SELECT generate_series(1, 10000)")
		last = switchWAL(t, c)
	}
	waitUntil(t, 2*time.Minute, "archive_command to fail", func() bool { return stats(t, c).failed > 0 })
	ready, _ := filepath.Glob(filepath.Join(c.DataDir, "pg_wal", "archive_status", "*.ready"))
	if len(ready) < 5 {
		t.Fatalf("%d files waiting in pg_wal, want 5", len(ready))
	}
	if s := stats(t, c); s.lastArchived[:24] >= last {
		t.Fatalf("%s reported archived while S3 was down", s.lastArchived)
	}
	if log := c.LogTail(200); !strings.Contains(log, "tidemark: ") {
		t.Errorf("no tidemark error in the server log:\n%s", log)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// A new ready file wakes the archiver, which otherwise waits a minute
	// after three failures.
	last = switchWAL(t, c)
	waitArchived(t, c, last)
	checkNoGaps(t, w.list(t, c), last)
}

// TestWALAgentKill9: the agent killed with SIGKILL in the middle of an
// upload, then started again: no gap, and no "different segment" error.
func TestWALAgentKill9(t *testing.T) {
	srv := testenv.MinIO(t)
	w := newS3Repo(t, srv)
	proxy := newGateProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"))
	u, err := url.Parse(srv.URL(w.bucket, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("endpoint", "http://"+proxy.addr())
	u.RawQuery = q.Encode()
	viaProxy := u.String()
	c := w.archivingCluster(t, 15, 1, nil, "TIDEMARK_REPO="+viaProxy)
	w.env = append(w.env, "TIDEMARK_REPO="+viaProxy)
	testenv.PGBenchInit(t, c, 1)
	a := w.startAgent(t, c)
	waitArchived(t, c, switchWAL(t, c))

	proxy.arm(32 << 10)
	testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Transactions: 300})
	switchWAL(t, c)
	select {
	case <-proxy.held:
	case <-time.After(3 * time.Minute):
		t.Fatal("no upload reached the proxy")
	}
	a.kill()
	close(proxy.release)
	t.Logf("agent killed mid-upload; its last lines:\n%s", lastLines(a.log.String(), 4))

	b := w.startAgent(t, c)
	testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Transactions: 300})
	var last string
	for range 3 {
		last = switchWAL(t, c)
	}
	waitArchived(t, c, last)
	b.stop(t)
	checkNoGaps(t, w.list(t, c), last)
	t.Logf("the restarted agent found %d files already archived with identical contents",
		strings.Count(b.log.String(), "msg=\"already archived with identical contents\""))
	for what, log := range map[string]string{"server": c.LogTail(1000), "first agent": a.log.String(), "second agent": b.log.String()} {
		if strings.Contains(log, "a different") || strings.Contains(log, "corrupt") {
			t.Errorf("%s log reports a conflict:\n%s", what, log)
		}
	}
}

// TestWALFaults: refusals and wal-fetch's exit codes against one archived
// cluster.
func TestWALFaults(t *testing.T) {
	srv := testenv.MinIO(t)
	w := newS3Repo(t, srv)
	c := w.archivingCluster(t, 15, 1, nil)
	c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g")
	switchWAL(t, c)
	last := switchWAL(t, c)
	waitArchived(t, c, last)
	l := w.list(t, c)
	name := l.Timelines[0].Last
	orig, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", name))
	if err != nil {
		t.Fatal(err)
	}
	sysid := c.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	key := "repo/wal/" + sysid + "/" + name[:16] + "/" + name
	out := testenv.SharedDir(t)
	fetch := func(t *testing.T, file string, env ...string) (result, string) {
		dest := filepath.Join(out, "RECOVERYXLOG")
		os.Remove(dest)
		return w.run(t, c.DataDir, env, "wal-fetch", "--no-spool", file, dest), dest
	}

	t.Run("re-push of an identical segment succeeds", func(t *testing.T) {
		if r := w.run(t, c.DataDir, nil, "wal-push", "--no-agent", "pg_wal/"+name); r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a different segment under an archived name is refused", func(t *testing.T) {
		other := bytes.Clone(orig)
		other[len(other)/2] ^= 0xFF
		dir := testenv.SharedDir(t)
		p := filepath.Join(dir, name)
		os.WriteFile(p, other, 0o600)
		testenv.ChownToServer(t, p)
		r := w.run(t, c.DataDir, nil, "wal-push", p)
		if r.code == 0 || !strings.Contains(r.stderr, "a different "+name+" is already archived") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("not a one-line error: %q", r.stderr)
		}
		t.Logf("exit %d: %s", r.code, r.stderr)
		r, dest := fetch(t, name)
		got, _ := os.ReadFile(dest)
		if r.code != 0 || !bytes.Equal(got, orig) {
			t.Fatalf("the archived segment changed (exit %d: %s)", r.code, r.stderr)
		}
	})
	t.Run("missing segment exits 1", func(t *testing.T) {
		f, _ := pg.ParseWALFileName(name)
		seg, _ := f.SegNo(l.SegSize)
		r, dest := fetch(t, pg.SegmentName(1, seg+10, l.SegSize))
		if r.code != 1 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		t.Logf("exit %d: %s", r.code, r.stderr)
		if _, err := os.Stat(dest); err == nil {
			t.Fatal("a destination file was written")
		}
	})
	t.Run("missing history file exits 1", func(t *testing.T) {
		if r, _ := fetch(t, "00000002.history"); r.code != 1 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("wrong identity exits above 125", func(t *testing.T) {
		other := newFSRepo(t) // only for a fresh identity file
		r, _ := fetch(t, name, "TIDEMARK_IDENTITY="+other.identity)
		if r.code <= 125 || r.code != 128+4 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		t.Logf("exit %d: %s", r.code, r.stderr)
	})
	t.Run("corrupt object exits above 125", func(t *testing.T) {
		cl := srv.Client()
		obj, err := cl.GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(obj.Body)
		obj.Body.Close()
		restore := func() {
			cl.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key), Body: bytes.NewReader(body)})
		}
		defer restore()
		bad := bytes.Clone(body)
		bad[len(bad)-20] ^= 0x01
		if _, err := cl.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key), Body: bytes.NewReader(bad)}); err != nil {
			t.Fatal(err)
		}
		r, dest := fetch(t, name)
		if r.code != 128+6 || !strings.Contains(r.stderr, "corrupt") || !strings.Contains(r.stderr, key[len("repo/"):]) {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if _, err := os.Stat(dest); err == nil {
			t.Fatal("a corrupt segment reached the destination")
		}
		t.Logf("exit %d: %s", r.code, r.stderr)
		// Another segment's object under this name (a swap): refused too.
		prev := l.Timelines[0].First
		prevKey := "repo/wal/" + sysid + "/" + prev[:16] + "/" + prev
		if _, err := cl.CopyObject(t.Context(), &s3.CopyObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key),
			CopySource: aws.String(w.bucket + "/" + prevKey)}); err != nil {
			t.Fatal(err)
		}
		r, _ = fetch(t, name)
		if r.code != 128+6 || !strings.Contains(r.stderr, "holds "+prev) {
			t.Fatalf("swapped object: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("swapped: exit %d: %s", r.code, r.stderr)
	})
}

// TestWALPushForeignSegment: a segment of another cluster is refused, and
// nothing is archived under this cluster's name.
func TestWALPushForeignSegment(t *testing.T) {
	w := newFSRepo(t)
	a := w.archivingCluster(t, 15, 1, map[string]string{"archive_mode": "off"})
	b := testenv.NewCluster(t, testenv.PGConfig{InitdbArgs: []string{"--wal-segsize=1"}})
	name := b.QueryString(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	foreign := filepath.Join(b.DataDir, "pg_wal", name)
	dir := testenv.SharedDir(t)
	p := filepath.Join(dir, name)
	data, err := os.ReadFile(foreign)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, data, 0o600)
	testenv.ChownToServer(t, p)
	r := w.run(t, a.DataDir, nil, "wal-push", p)
	if r.code == 0 || !strings.Contains(r.stderr, "belongs to system") {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	sysid := a.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	for oi, err := range w.store.List(t.Context(), walarchive.Prefix, "") {
		if err != nil {
			t.Fatal(err)
		}
		t.Errorf("refused push left %s (cluster %s)", oi.Key, sysid)
	}
}

// TestWALFetchStaleSpool: a spool left behind by an earlier restore (its
// prefetcher killed) is not served to the next restore into the same
// directory, even for a segment of the same name.
func TestWALFetchStaleSpool(t *testing.T) {
	ra, rb := newFSRepo(t), newFSRepo(t)
	a := ra.archivingCluster(t, 15, 1, nil)
	b := rb.archivingCluster(t, 15, 1, nil)
	// Two consecutive segments that both clusters archived.
	var name1 string
	for _, c := range []*testenv.Cluster{a, b} {
		c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g")
		name1 = max(name1, switchWAL(t, c))
	}
	f1, _ := pg.ParseWALFileName(name1)
	s1, _ := f1.SegNo(1 << 20)
	name2 := pg.SegmentName(1, s1+1, 1<<20)
	for _, c := range []*testenv.Cluster{a, b} {
		for switchWAL(t, c) < name2 {
		}
		waitArchived(t, c, name2)
	}
	origB, err := os.ReadFile(filepath.Join(b.DataDir, "pg_wal", name2))
	if err != nil {
		t.Fatal(err)
	}

	// "Restore 1" of cluster a into dir, its postmaster standing in.
	dir := filepath.Join(testenv.SharedDir(t), "data")
	spool := dir + ".tidemark-spool"
	setup := func(c *testenv.Cluster) {
		os.MkdirAll(filepath.Join(dir, "global"), 0o700)
		os.MkdirAll(filepath.Join(dir, "pg_wal"), 0o700)
		ctl, err := os.ReadFile(filepath.Join(c.DataDir, "global", "pg_control"))
		if err != nil {
			t.Fatal(err)
		}
		// A restore writes a new file.
		os.Remove(filepath.Join(dir, "global", "pg_control"))
		os.WriteFile(filepath.Join(dir, "global", "pg_control"), ctl, 0o600)
		pid, _ := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
		os.WriteFile(filepath.Join(dir, "postmaster.pid"), pid, 0o600)
		testenv.ChownToServer(t, dir)
	}
	setup(a)
	if r := ra.run(t, dir, nil, "wal-fetch", name1, "pg_wal/RECOVERYXLOG"); r.code != 0 {
		t.Fatalf("restore 1: exit %d: %s", r.code, r.stderr)
	}
	waitUntil(t, time.Minute, name2+" in the spool", func() bool {
		_, err := os.Stat(filepath.Join(spool, "seg", name2))
		return err == nil
	})
	// The prefetcher dies without cleaning up.
	pidb, _ := os.ReadFile(filepath.Join(spool, "lock"))
	killPID(t, strings.TrimSpace(string(pidb)))
	stale, _ := os.ReadFile(filepath.Join(spool, "seg", name2))
	if bytes.Equal(stale, origB) {
		t.Fatal("test setup: both clusters wrote identical segments")
	}

	// "Restore 2": cluster b into the same directory, from its repository.
	setup(b)
	t.Cleanup(func() {
		stopPrefetcher(t, spool)
		// Its process may still write in the spool after it let go of
		// the lock (its last log line): remove the spool until it stays
		// gone, before the temporary directory's own cleanup.
		waitUntil(t, 10*time.Second, "the spool removed", func() bool {
			os.RemoveAll(spool)
			_, err := os.Stat(spool)
			return errors.Is(err, os.ErrNotExist)
		})
	})
	r := rb.run(t, dir, nil, "wal-fetch", name2, "pg_wal/RECOVERYXLOG")
	if r.code != 0 {
		t.Fatalf("restore 2: exit %d: %s", r.code, r.stderr)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "pg_wal", "RECOVERYXLOG"))
	if !bytes.Equal(got, origB) {
		t.Fatal("restore 2 was served the spool of restore 1")
	}
}

// killPID kills a process with SIGKILL and waits until it is dead (or a
// zombie: the tests may be its subreaper).
func killPID(t *testing.T, s string) {
	t.Helper()
	pid, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("bad pid %q", s)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	waitUntil(t, 10*time.Second, "the prefetcher to die", func() bool {
		b, err := os.ReadFile("/proc/" + s + "/stat")
		if err != nil {
			return true
		}
		i := bytes.LastIndexByte(b, ')')
		return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
