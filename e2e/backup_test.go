package e2e

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// The end-to-end tests of tidemark backup, list and info run the binary
// against real PostgreSQL servers and a file:// or MinIO repository, and
// restore with tidemark restore. They reuse restoreEnv (restore_test.go).
// The page-level logic (incremental equivalence under a randomized
// workload, checksums, exclusions) is tested in package backup.

// backupEnv is a restoreEnv whose repository has small packs, so that a
// small database makes many packs and index deltas.
func backupEnv(t *testing.T, s3 bool, packSize int64) *restoreEnv {
	t.Helper()
	backend := "file"
	if s3 {
		backend = "s3"
	}
	e := newBackendEnv(t, backend, repo.InitOptions{PackSize: packSize})
	t.Cleanup(func() {
		if !t.Failed() {
			e.checkKeysDocumented()
		}
	})
	return e
}

// backupCluster starts a cluster whose archive_command finds the
// repository in its environment, as a production setup might: URLs with
// %-escapes cannot go into archive_command.
func (e *restoreEnv) backupCluster(version int, settings map[string]string) *testenv.Cluster {
	s := map[string]string{"archive_mode": "on", "archive_command": e.bin + " wal-push %p"}
	for k, v := range settings {
		s[k] = v
	}
	env := append([]string{"TIDEMARK_REPO=" + e.url, "TIDEMARK_IDENTITY=" + e.identity}, e.env...)
	return testenv.NewCluster(e.t, testenv.PGConfig{Version: version, Settings: s, Env: env})
}

func (e *restoreEnv) store() storage.Store {
	st, err := location.Open(e.t.Context(), e.url, location.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// count returns the number and bytes of objects under prefix.
func (e *restoreEnv) count(prefix string) (int, int64) {
	n, size := 0, int64(0)
	for oi, err := range e.store().List(e.t.Context(), prefix, "") {
		if err != nil {
			e.t.Fatal(err)
		}
		n++
		size += oi.Size
	}
	return n, size
}

type backupJSON struct {
	Snapshot struct {
		ID     string `json:"id"`
		Type   string `json:"type"`
		Parent string `json:"parent"`
	} `json:"snapshot"`
	Method   string `json:"method"`
	Fallback string `json:"fallback"`
	Stats    struct {
		NewBytes     int64 `json:"new_bytes"`
		ReadBytes    int64 `json:"read_bytes"`
		LogicalBytes int64 `json:"logical_bytes"`
	} `json:"stats"`
	Sources []struct {
		Method string `json:"method"`
		Used   bool   `json:"used"`
		Pages  int64  `json:"pages"`
		Reason string `json:"why_not"`
	} `json:"change_sources"`
}

func (e *restoreEnv) backupJSON(c *testenv.Cluster, extra ...string) backupJSON {
	e.t.Helper()
	args := append([]string{"backup", "--json", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)
	out := e.mustTidemark(append(args, extra...)...)
	var res backupJSON
	if err := fromJSON(out, "backup", &res); err != nil {
		e.t.Fatalf("backup --json printed %q: %v", out, err)
	}
	return res
}

// TestBackupCLI: a full and an incremental backup by the CLI, list and info,
// and a restore of the incremental that starts and has the source's data.
// PostgreSQL 15 with a file:// repository, 17 with MinIO.
func TestBackupCLI(t *testing.T) {
	for _, tc := range []struct {
		version int
		s3      bool
	}{{15, false}, {16, true}, {17, true}, {18, false}} {
		t.Run(fmt.Sprintf("pg%d/s3=%v", tc.version, tc.s3), func(t *testing.T) {
			e := backupEnv(t, tc.s3, 1<<20)
			var settings map[string]string
			if tc.version >= 17 {
				settings = map[string]string{"summarize_wal": "on"}
			}
			c := e.backupCluster(tc.version, settings)
			testenv.PGBenchInit(t, c, 2)
			full := e.backupJSON(c)
			if full.Snapshot.Type != "full" {
				t.Fatalf("first backup: %+v", full)
			}
			testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Transactions: 200})
			want := testenv.DatabaseFingerprint(t, c)
			inc := e.backupJSON(c)
			if inc.Snapshot.Type != "incremental" || inc.Snapshot.Parent != full.Snapshot.ID {
				t.Fatalf("second backup: %+v", inc)
			}
			// wal-push wrote block summaries; 17 has its own besides,
			// and the backup takes whichever reads less.
			wantSources := 1
			if tc.version >= 17 {
				wantSources = 2
			}
			usable := 0
			for _, s := range inc.Sources {
				if s.Reason == "" {
					usable++
				}
			}
			if inc.Method != "block-summaries" && !(tc.version >= 17 && inc.Method == "wal-summaries") || usable != wantSources {
				t.Errorf("incremental used %s (%s), sources %+v", inc.Method, inc.Fallback, inc.Sources)
			}
			if inc.Stats.ReadBytes*2 > full.Stats.ReadBytes {
				t.Errorf("incremental read %d bytes, the full backup %d", inc.Stats.ReadBytes, full.Stats.ReadBytes)
			}
			if inc.Stats.NewBytes*2 > full.Stats.NewBytes {
				t.Errorf("incremental stored %d bytes, the full backup %d", inc.Stats.NewBytes, full.Stats.NewBytes)
			}

			var list []struct {
				ID             string `json:"id"`
				Type           string `json:"type"`
				StartLSN       string `json:"start_lsn"`
				StopLSN        string `json:"stop_lsn"`
				LogicalBytes   int64  `json:"logical_bytes"`
				NewBytes       int64  `json:"new_bytes"`
				ChecksumErrors int    `json:"checksum_errors"`
			}
			if err := fromJSON(e.mustTidemark(append([]string{"list", "--json"}, e.repoArgs()...)...), "snapshots", &list); err != nil {
				t.Fatal(err)
			}
			if len(list) != 2 || list[0].ID != full.Snapshot.ID || list[1].ID != inc.Snapshot.ID || list[1].Type != "incremental" ||
				list[1].StartLSN == "" || list[1].LogicalBytes == 0 {
				t.Fatalf("list: %+v", list)
			}
			text := e.mustTidemark(append([]string{"list"}, e.repoArgs()...)...)
			if !strings.Contains(text, inc.Snapshot.ID) || !strings.Contains(text, "incremental") {
				t.Errorf("list:\n%s", text)
			}
			var info struct {
				Snapshots   int     `json:"snapshots"`
				StoredBytes int64   `json:"stored_bytes"`
				DedupRatio  float64 `json:"dedup_ratio"`
			}
			if err := fromJSON(e.mustTidemark(append([]string{"info", "--json"}, e.repoArgs()...)...), "repository", &info); err != nil {
				t.Fatal(err)
			}
			if info.Snapshots != 2 || info.StoredBytes == 0 || info.DedupRatio < 2 {
				t.Errorf("info: %+v", info)
			}
			detail := e.mustTidemark(append(append([]string{"info"}, e.repoArgs()...), inc.Snapshot.ID)...)
			if !strings.Contains(detail, "START WAL LOCATION") || !strings.Contains(detail, full.Snapshot.ID) {
				t.Errorf("info %s:\n%s", inc.Snapshot.ID, detail)
			}

			switchAndWait(t, c)
			dir := e.target("restored")
			e.restore(dir, "--backup", inc.Snapshot.ID, "--target", "immediate", "--target-action", "promote")
			r := e.start(tc.version, dir, false)
			waitRecovered(t, r)
			if got := testenv.DatabaseFingerprint(t, r); got != want {
				t.Errorf("restored incremental: fingerprint %s, want %s", got, want)
			}
		})
	}
}

// startBackup starts tidemark backup in the background.
func (e *restoreEnv) startBackup(c *testenv.Cluster, extra ...string) (*exec.Cmd, *strings.Builder) {
	e.t.Helper()
	args := append([]string{"backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)
	cmd := exec.Command(e.bin, append(args, extra...)...)
	cmd.Env = append(os.Environ(), e.env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, &out
}

// waitObjects waits until at least n objects exist under prefix.
func (e *restoreEnv) waitObjects(prefix string, n int) {
	e.t.Helper()
	waitFor(e.t, func() bool {
		got, _ := e.count(prefix)
		return got >= n
	})
}

// TestBackupConcurrentRefused: a second backup of a cluster while one runs
// is refused (exit 5) with a message naming the running one.
func TestBackupConcurrentRefused(t *testing.T) {
	e := backupEnv(t, false, 1<<20)
	c := e.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "big", 200000)
	first, out := e.startBackup(c, "--max-read-rate", "8MiB")
	e.waitObjects("leases/", 1)
	_, errs, code := e.tidemark(append([]string{"backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)...)
	if code != 5 {
		t.Fatalf("second backup exited %d, want 5:\n%s", code, errs)
	}
	host, _ := os.Hostname()
	for _, want := range []string{"another backup", host, fmt.Sprintf("pid %d", first.Process.Pid), "since"} {
		if !strings.Contains(errs, want) {
			t.Errorf("refusal does not say %q:\n%s", want, errs)
		}
	}
	if err := first.Wait(); err != nil {
		t.Fatalf("first backup: %v\n%s", err, out)
	}
	if n := len(e.snapshots()); n != 1 {
		t.Fatalf("%d snapshots, want 1", n)
	}
}

// TestBackupKilledResumes: a backup killed with SIGKILL leaves no snapshot,
// and the next one reuses what the first uploaded: it stores much less
// than the first had uploaded before it was killed.
func TestBackupKilledResumes(t *testing.T) {
	e := backupEnv(t, false, 256<<10)
	c := e.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "big", 400000)
	first, out := e.startBackup(c, "--max-read-rate", "8MiB", "--parallel", "2")
	// The backup indexes its uploads every 4 packs (1 MiB here) of about
	// 14 MiB: kill it once most are indexed.
	e.waitObjects("index/", 8)
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	if n := len(e.snapshots()); n != 0 {
		t.Fatalf("a killed backup left %d snapshot(s)\n%s", n, out)
	}
	_, uploaded := e.count("data/")
	// The killed backup's session ended; PostgreSQL forgets its backup.
	second := e.backupJSON(c)
	if second.Snapshot.Type != "full" {
		t.Fatalf("second backup: %+v", second)
	}
	t.Logf("killed run uploaded %d bytes of data packs; the resumed run stored %d of %d logical", uploaded, second.Stats.NewBytes, second.Stats.LogicalBytes)
	if uploaded == 0 || second.Stats.NewBytes*2 >= uploaded {
		t.Fatalf("resumed backup stored %d bytes although %d were uploaded before the kill", second.Stats.NewBytes, uploaded)
	}
	dir := e.target("restored")
	e.restore(dir, "--target", "immediate", "--target-action", "promote")
	r := e.start(15, dir, false)
	waitRecovered(t, r)
	if got, want := testenv.TableChecksum(t, r, "big"), testenv.TableChecksum(t, c, "big"); got != want {
		t.Fatalf("restored table: %s, want %s", got, want)
	}
}

// TestBackupChecksumFailure: a page corrupted on disk is reported by the
// backup, recorded in the snapshot and shown by info; with
// --fail-on-checksum-error the backup exits 6 and commits nothing.
func TestBackupChecksumFailure(t *testing.T) {
	e := backupEnv(t, false, 1<<20)
	c := e.backupCluster(15, map[string]string{"autovacuum": "off"})
	testenv.LoadRandomTable(t, c, "victim", 20000)
	rel := c.QueryString(t, "SELECT pg_relation_filepath('victim')")
	c.Stop()
	corruptPage(t, filepath.Join(c.DataDir, rel), 3)
	c.Start()

	_, errs, code := e.tidemark(append([]string{"backup", "--fail-on-checksum-error", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)...)
	if code != 6 || !strings.Contains(errs, rel) || !strings.Contains(errs, "block 3") {
		t.Fatalf("backup --fail-on-checksum-error exited %d:\n%s", code, errs)
	}
	if n := len(e.snapshots()); n != 0 {
		t.Fatalf("%d snapshots after a fatal checksum failure", n)
	}
	out := e.mustTidemark(append([]string{"backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)...)
	if !strings.Contains(out, "checksum failure: "+rel+" block 3") {
		t.Fatalf("backup output does not report the failure:\n%s", out)
	}
	snaps := e.snapshots()
	if len(snaps) != 1 || len(snaps[0].ChecksumErrors) != 1 || snaps[0].ChecksumErrors[0].File != rel || snaps[0].ChecksumErrors[0].Block != 3 {
		t.Fatalf("snapshot records %+v", snaps[0].ChecksumErrors)
	}
	if list := e.mustTidemark(append(append([]string{"info"}, e.repoArgs()...), snaps[0].ID)...); !strings.Contains(list, rel+" block 3") {
		t.Errorf("info does not show the failure:\n%s", list)
	}
}

// corruptPage flips bytes in the tuple area of page blk of a relation file,
// leaving its header (and LSN) intact, as a bad disk would.
func corruptPage(t *testing.T, path string, blk int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off := blk*8192 + 4000
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0x5a
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestBackupCrossClusterDedup: two clusters from one base (a physical copy
// of the first, given a new system identifier the way pg_createsubscriber
// does it: pg_control rewritten, then pg_resetwal) back up into one
// repository. The second cluster's first full backup stores only what
// differs from the first's, and each restores to its own data.
func TestBackupCrossClusterDedup(t *testing.T) {
	e := backupEnv(t, true, 0)
	settings := map[string]string{"autovacuum": "off"}
	a := e.backupCluster(15, settings)
	// Mostly random data, which compresses little, so that stored bytes
	// compare like for like.
	testenv.PGBenchInit(t, a, 2)
	testenv.LoadRandomTable(t, a, "data", 200000)
	a.Exec(t, "VACUUM FREEZE")
	a.Exec(t, "CHECKPOINT")
	wantA := testenv.DatabaseFingerprint(t, a)
	fullA := e.backupJSON(a, "--full")

	// The copy, taken from the stopped first cluster.
	a.Stop()
	clone := e.target("clone")
	if out, err := exec.Command("cp", "-a", a.DataDir, clone).CombinedOutput(); err != nil {
		t.Fatalf("copy the data directory: %v\n%s", err, out)
	}
	a.Start()
	sysA := a.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	newSystemIdentifier(t, clone, a.Bin("pg_resetwal"))
	env := append([]string{"TIDEMARK_REPO=" + e.url, "TIDEMARK_IDENTITY=" + e.identity}, e.env...)
	b := testenv.AdoptDataDir(t, 15, clone, testenv.PGConfig{Env: env, Settings: map[string]string{
		"archive_mode": "on", "archive_command": e.bin + " wal-push %p", "autovacuum": "off"}})
	sysB := b.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	if sysB == sysA {
		t.Fatalf("the copy kept system identifier %s", sysA)
	}
	// What the second cluster changes after the split.
	b.Exec(t, "CREATE TABLE only_b AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g")
	b.Exec(t, "UPDATE data SET payload = md5(payload) WHERE id <= 500")
	b.Exec(t, "CHECKPOINT")
	wantB := testenv.DatabaseFingerprint(t, b)
	fullB := e.backupJSON(b, "--full")

	_, onlyB := e.count("data/") // packs after both backups
	t.Logf("cluster %s full backup: %d logical bytes, %d new; cluster %s full backup: %d logical, %d new; data packs %d bytes",
		sysA, fullA.Stats.LogicalBytes, fullA.Stats.NewBytes, sysB, fullB.Stats.LogicalBytes, fullB.Stats.NewBytes, onlyB)
	// The second full reads everything but stores only what differs, about
	// 3.5 MiB before compression (1.6 MiB stored when measured): the new
	// table (1.4 MiB), the 1 MiB slots of the updated rows' old and new
	// places, and the catalogs and files the new identity and WAL position
	// touched. The first stored everything, 8 MiB.
	if fullB.Stats.LogicalBytes < fullA.Stats.LogicalBytes || fullB.Stats.NewBytes*4 > fullA.Stats.NewBytes || fullB.Stats.NewBytes > 3<<20 {
		t.Fatalf("the second cluster's full backup stored %d of %d bytes (the first's stored %d): it should store only what differs",
			fullB.Stats.NewBytes, fullB.Stats.LogicalBytes, fullA.Stats.NewBytes)
	}

	// Both restore, each to its own data.
	switchAndWait(t, a)
	switchAndWait(t, b)
	for _, tc := range []struct {
		name, cluster, backup, want string
	}{{"a", sysA, fullA.Snapshot.ID, wantA}, {"b", sysB, fullB.Snapshot.ID, wantB}} {
		dir := e.target("restored-" + tc.name)
		e.restore(dir, "--cluster", tc.cluster, "--backup", tc.backup, "--target", "immediate", "--target-action", "promote")
		r := e.start(15, dir, false)
		waitRecovered(t, r)
		if got := r.QueryString(t, "SELECT system_identifier FROM pg_control_system()"); got != tc.cluster {
			t.Errorf("restore of cluster %s has system identifier %s", tc.cluster, got)
		}
		if got := testenv.DatabaseFingerprint(t, r); got != tc.want {
			t.Errorf("restore of cluster %s: fingerprint %s, want %s", tc.cluster, got, tc.want)
		}
		r.Stop()
	}
	e.verify(0, "--read-data")
}

// newSystemIdentifier gives the stopped data directory dir a new system
// identifier, as pg_createsubscriber does: pg_control rewritten with it (and
// its CRC), then pg_resetwal -f, which starts a fresh WAL whose segments
// carry it. PostgreSQL 15's pg_control: the identifier is the first 8
// bytes, the CRC-32C of the first 288 bytes follows them.
func newSystemIdentifier(t *testing.T, dir, pgResetWAL string) {
	t.Helper()
	path := filepath.Join(dir, "global", "pg_control")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const crcOffset = 288
	old := binary.LittleEndian.Uint64(b)
	binary.LittleEndian.PutUint64(b, old^0x5a5a5a5a)
	binary.LittleEndian.PutUint32(b[crcOffset:], crc32.Checksum(b[:crcOffset], crc32.MakeTable(crc32.Castagnoli)))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, dir)
	cmd := testenv.ServerCommand(t.Context(), t, nil, pgResetWAL, "-f", "-D", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_resetwal: %v\n%s", err, out)
	}
}
