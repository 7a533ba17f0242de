package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/refs"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage/location"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

// secondRegion is a restoreEnv whose repository lives on MinIO with a
// second repository on versitygw, made by init --from-repo: two real S3
// servers that can be stopped like a region outage.
type secondRegion struct {
	*restoreEnv
	minio, vgw *testenv.S3Server
	url2       string
}

func newSecondRegion(t *testing.T) *secondRegion {
	t.Helper()
	e := &restoreEnv{t: t, bin: testenv.Tidemark(t), shared: testenv.SharedDir(t)}
	s := &secondRegion{restoreEnv: e, minio: testenv.MinIO(t), vgw: testenv.VersityGW(t)}
	waitFor(t, func() bool {
		_, err := s.minio.Client().ListBuckets(t.Context(), &awss3.ListBucketsInput{})
		return err == nil
	})
	e.url = s.minio.URL(s.minio.NewBucket(t), "tidemark")
	s.url2 = s.vgw.URL(s.vgw.NewBucket(t), "tidemark")
	// Both servers take the same test credentials.
	e.env = append(s.minio.Env(), "TIDEMARK_REPO2="+s.url2, "TIDEMARK_RETRY_FOR=3s")
	for _, kv := range s.minio.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	e.identity = filepath.Join(e.shared, "identity.txt")
	if err := os.WriteFile(e.identity, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, e.identity)
	e.mustTidemark("init", "--repo", e.url, "--recipient", id.Recipient().String(), "--pack-size", "256KiB")
	out := e.mustTidemark("init", "--from-repo", "--repo", e.url, "--identity", e.identity, "--repo2", s.url2, "--pack-size", "256KiB")
	if !strings.Contains(out, "second repository of") {
		t.Fatalf("init --from-repo:\n%s", out)
	}
	return s
}

// open opens one of the two repositories through the Go API.
func (s *secondRegion) open(url string) *repo.Repo {
	s.t.Helper()
	st, err := location.Open(s.t.Context(), url, location.Options{RetryFor: time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	b, _ := os.ReadFile(s.identity)
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		s.t.Fatal(err)
	}
	r, err := repo.Open(s.t.Context(), st, ids, repo.Options{})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { r.Close() })
	return r
}

// walNames lists the archived segments of a repository.
func (s *secondRegion) walNames(url string, cluster uint64) []string {
	s.t.Helper()
	l, err := walarchive.FromRepo(s.open(url), walarchive.Options{}).List(s.t.Context(), cluster)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []string
	for _, tl := range l.Timelines {
		for _, r := range tl.Segments {
			for seg := r.First; seg <= r.Last; seg++ {
				out = append(out, l.SegmentName(tl.Timeline, seg))
			}
		}
	}
	return out
}

type copyJSONResult struct {
	Copied       []string `json:"copied"`
	Present      int      `json:"present"`
	Blobs        int64    `json:"blobs"`
	RawBytes     int64    `json:"raw_bytes"`
	BlobsPresent int64    `json:"blobs_present"`
	Packs        int64    `json:"packs"`
	WALFiles     int64    `json:"wal_files"`
	WALPresent   int64    `json:"wal_present"`
	Seconds      float64  `json:"seconds"`
	BytesPerSec  float64  `json:"bytes_per_second"`
}

func (s *secondRegion) copy(args ...string) copyJSONResult {
	s.t.Helper()
	out := s.mustTidemark(append(append([]string{"copy", "--json"}, s.repoArgs()...), args...)...)
	var res copyJSONResult
	if err := fromJSON(out, "copy", &res); err != nil {
		s.t.Fatalf("copy --json printed %q: %v", out, err)
	}
	s.t.Logf("copy: %d snapshots, %d blobs (%d bytes) sent in %d packs, %d blobs there, %d WAL files sent, %d there, %.2f s, %.1f MiB/s",
		len(res.Copied), res.Blobs, res.RawBytes, res.Packs, res.BlobsPresent, res.WALFiles, res.WALPresent, res.Seconds, res.BytesPerSec/(1<<20))
	return res
}

// startCopy starts a copy in the background.
func (s *secondRegion) startCopy(args ...string) (*exec.Cmd, *syncBuffer) {
	s.t.Helper()
	cmd := exec.Command(s.bin, append(append([]string{"copy", "--json"}, s.repoArgs()...), args...)...)
	cmd.Env = append(os.Environ(), s.env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}

// count2 counts the objects under prefix in the second repository.
func (s *secondRegion) count2(prefix string) int {
	st, err := location.Open(s.t.Context(), s.url2, location.Options{})
	if err != nil {
		s.t.Fatal(err)
	}
	n := 0
	for _, err := range st.List(s.t.Context(), prefix, "") {
		if err != nil {
			s.t.Fatal(err)
		}
		n++
	}
	return n
}

// TestSecondRegion follows docs/operations.md, "A second region": WAL
// goes to both repositories; copy sends a first snapshot, then only what a
// second adds; a copy killed with -9 is completed by its rerun, which
// reuses what landed; copies run beside gc on both sides and lose nothing;
// a push while the second is down fails (exit 7) and succeeds once it is
// back; and with the first stopped in the middle of a restore, the restore
// completes from the second, recovery fetches its WAL from the second, and
// a drill passes from the second alone.
func TestSecondRegion(t *testing.T) {
	s := newSecondRegion(t)
	c := s.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "big", 300000)
	first := s.backup(c)
	switchAndWait(t, c)
	cluster := first.Cluster

	// Every segment archived is in both repositories.
	w1, w2 := s.walNames(s.url, cluster), s.walNames(s.url2, cluster)
	if len(w1) == 0 || strings.Join(w1, ",") != strings.Join(w2, ",") {
		t.Fatalf("archived segments differ:\n repo:  %v\n repo2: %v", w1, w2)
	}

	// A first copy sends the snapshot; WAL is there already.
	r1 := s.copy()
	if len(r1.Copied) != 1 || r1.Copied[0] != first.ID || r1.Blobs == 0 || r1.WALFiles != 0 || r1.WALPresent < int64(len(w1)) {
		t.Fatalf("first copy: %+v", r1)
	}
	// An incremental: only what changed (1% of the table) travels.
	c.Exec(t, "UPDATE big SET payload = md5(payload) WHERE id <= 3000")
	s.backup(c)
	r2 := s.copy()
	if len(r2.Copied) != 1 || r2.Present != 1 || r2.RawBytes*4 > r1.RawBytes || r2.Blobs*4 > r1.Blobs || r2.BlobsPresent == 0 {
		t.Fatalf("incremental copy: %+v (first sent %d bytes)", r2, r1.RawBytes)
	}
	if again := s.copy(); len(again.Copied) != 0 || again.Blobs != 0 || again.Present != 2 {
		t.Fatalf("a copy with nothing new: %+v", again)
	}

	// Killed with -9 once it has indexed some packs; the rerun commits the
	// snapshot and sends nothing that landed and was indexed.
	testenv.LoadRandomTable(t, c, "big2", 300000)
	third := s.backup(c)
	need := s.missingBlobs(third)
	deltas := s.count2("index/")
	cmd, out := s.startCopy("--parallel", "1")
	waitFor(t, func() bool { return s.count2("index/") >= deltas+2 || cmd.ProcessState != nil })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if strings.Contains(out.String(), `"copied"`) {
		t.Fatalf("the copy finished before it was killed:\n%s", out)
	}
	left := s.missingBlobs(third)
	r3 := s.copy()
	t.Logf("the third snapshot's blobs the second repository lacked: %d before the killed copy, %d after it", need, left)
	if len(r3.Copied) != 1 || left >= need || r3.Blobs != int64(left) {
		t.Fatalf("rerun after kill -9: %+v; want the snapshot copied with the %d blobs still missing, not the %d missing before the killed run", r3, left, need)
	}

	// A copy while gc runs in a loop on both repositories.
	testenv.UpdateRandomRows(t, c, "big2", 0.05)
	s.backup(c)
	cmd, out = s.startCopy()
	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, url := range []string{s.url, s.url2} {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, errs, code := s.tidemark("gc", "--repo", url, "--identity", s.identity, "--grace", "1s"); code != 0 && code != 5 {
					t.Errorf("gc on %s: exit %d: %s", url, code, errs)
					return
				}
			}
		})
	}
	err := cmd.Wait()
	close(done)
	wg.Wait()
	if err != nil || !strings.Contains(out.String(), `"copied"`) {
		t.Fatalf("copy beside gc: %v\n%s", err, out)
	}
	s.mustTidemark("gc", "--repo", s.url2, "--identity", s.identity, "--grace", "1s", "--wait", "1m")
	for _, url := range []string{s.url, s.url2} {
		args := []string{"verify", "--repo", url, "--identity", s.identity}
		if url == s.url2 {
			args = append(args, "--read-data")
		}
		if o, errs, code := s.tidemark(args...); code != 0 {
			t.Fatalf("%s after copies beside gc: exit %d\n%s%s", strings.Join(args, " "), code, o, errs)
		}
	}
	if a, b := s.snapshotIDs(s.url, cluster), s.snapshotIDs(s.url2, cluster); a != b {
		t.Fatalf("snapshots differ after the copies:\n repo:  %s\n repo2: %s", a, b)
	}

	// The second repository down: archive_command fails (exit 7, naming
	// it), PostgreSQL keeps the segment, and once it is back both have it.
	s.vgw.Stop()
	c.Exec(t, "INSERT INTO big SELECT g, 'while repo2 is down' FROM generate_series(20000001, 20001000) g")
	c.Exec(t, "SELECT pg_logical_emit_message(false, 'tidemark-test', 'switch')")
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	for deadline := time.Now().Add(2 * time.Minute); !strings.Contains(c.LogTail(50), "archive command failed with exit code 7"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("archive_command did not fail with the second repository down; server log:\n%s", c.LogTail(30))
		}
	}
	code, errs := s.walPush(c, seg)
	if code != 7 || !strings.Contains(errs, s.vgw.Endpoint[len("http://"):]) {
		t.Fatalf("wal-push with the second repository down: exit %d, want 7 naming it:\n%s", code, errs)
	}
	if err := s.vgw.Start(); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, c)
	if w1, w2 := s.walNames(s.url, cluster), s.walNames(s.url2, cluster); strings.Join(w1, ",") != strings.Join(w2, ",") || !strings.Contains(strings.Join(w2, ","), seg) {
		t.Fatalf("after the second came back, archived segments differ or lack %s:\n repo:  %v\n repo2: %v", seg, w1, w2)
	}
	want := testenv.TableChecksums(t, c)

	// The first repository stops in the middle of a restore: the restore
	// completes from the second, and recovery fetches WAL from the second.
	dir := s.target("failover")
	restore := exec.Command(s.bin, append([]string{"restore", "--pgdata", dir, "--parallel", "1"}, s.repoArgs()...)...)
	restore.Env = append(os.Environ(), s.env...)
	var rout bytes.Buffer
	restore.Stdout, restore.Stderr = &rout, &rout
	if err := restore.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "base")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restore wrote nothing:\n%s", rout.String())
		}
	}
	s.minio.Stop()
	if err := restore.Wait(); err != nil {
		t.Fatalf("restore with the first repository stopped: %v\n%s", err, rout.String())
	}
	if !strings.Contains(rout.String(), "reading from the second repository") || !strings.Contains(rout.String(), "read from the second repository") {
		t.Fatalf("the restore does not say it fell back:\n%s", rout.String())
	}
	r := s.start(15, dir, false)
	waitRecovered(t, r)
	if got := testenv.TableChecksums(t, r); !sameChecksums(got, want) {
		t.Fatalf("restored from the second repository: %v, want %v", got, want)
	}
	if !strings.Contains(r.LogTail(2000), "fetching from the second repository") {
		t.Errorf("recovery's log does not say wal-fetch fell back:\n%s", r.LogTail(40))
	}
	r.Stop()

	// A drill with the first repository down runs from the second and
	// stores its report there.
	res := s.drill(c, "--target", "immediate", "--amcheck", "off", "--allow-unproven")
	if res.code != 0 || !res.rep.OK {
		t.Fatalf("drill from the second repository: exit %d: %s\n%+v", res.code, res.stderr, res.rep)
	}
	if !strings.Contains(res.stderr, "repository unreachable") {
		t.Errorf("the drill does not say it fell back:\n%s", res.stderr)
	}
	if n := s.count2(drill.Prefix); n != 1 {
		t.Errorf("%d drill reports in the second repository, want 1", n)
	}
}

// missingBlobs counts the blobs snapshot sn of the first repository refers
// to that the second repository's index lacks.
func (s *secondRegion) missingBlobs(sn *repo.Snapshot) int {
	s.t.Helper()
	r1, r2 := s.open(s.url), s.open(s.url2)
	g := refs.New(r1, nil)
	if err := g.Load(s.t.Context(), sn.Roots); err != nil {
		s.t.Fatal(err)
	}
	n := 0
	var ferr error
	g.Walk(sn.Roots, nil, func(id blob.ID, _ bool, _ *refs.Node) {
		has, err := r2.Has(s.t.Context(), id)
		if err != nil {
			ferr = err
		}
		if !has {
			n++
		}
	})
	if ferr != nil {
		s.t.Fatal(ferr)
	}
	return n
}

// snapshotIDs lists a repository's snapshot ids of cluster, in order.
func (s *secondRegion) snapshotIDs(url string, cluster uint64) string {
	s.t.Helper()
	snaps, err := s.open(url).Snapshots(s.t.Context(), cluster)
	if err != nil {
		s.t.Fatal(err)
	}
	var ids []string
	for _, sn := range snaps {
		ids = append(ids, sn.ID)
	}
	return strings.Join(ids, ",")
}

// walPush runs wal-push for a segment of c by hand, as PostgreSQL would,
// and returns its exit code and stderr.
func (s *secondRegion) walPush(c *testenv.Cluster, seg string) (int, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), 2*time.Minute)
	defer cancel()
	env := append([]string{"TIDEMARK_REPO=" + s.url, "TIDEMARK_IDENTITY=" + s.identity}, s.env...)
	cmd := testenv.ServerCommand(ctx, s.t, env, s.bin, "wal-push", "--no-agent", "pg_wal/"+seg)
	cmd.Dir = c.DataDir
	var errs bytes.Buffer
	cmd.Stderr = &errs
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), errs.String()
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return 0, errs.String()
}

func sameChecksums(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
