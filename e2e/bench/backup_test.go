package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// The backup benchmark (TestBenchBackup): on a pgbench database plus a
// table of random md5 text (ENVIRONMENT.md: scale 100 and 10 million rows,
// about 2.5 GiB), full backups by tidemark and by pgBackRest 2.45 (zst,
// process-max 2, block incremental, start-fast) to one MinIO over TLS, as
// alternating pairs (Pairs), each tidemark run into a fresh repository so
// that nothing deduplicates against the run before; then, three times,
// after pgbench updates about 1% of the accounts and 1% of the md5 table is
// rewritten, an incremental by each. Wall time, CPU per GiB (the tool's
// process tree and MinIO's), bytes added to each repository (WAL excluded)
// and the peak RSS of each tool's process tree.
//
// Knobs: TIDEMARK_BENCH_SCALE (100), TIDEMARK_BENCH_ROWS (10000000),
// TIDEMARK_BENCH_MD5_UPDATE ("range": the first 1% of ids, a hot region,
// the default; "random": 1% of rows anywhere, which touches most pages of
// the table and of its index, so any page-level incremental stores most of
// it), TIDEMARK_BENCH_REBASE_PAGES (tidemark's --rebase-pages, to compare
// rebase thresholds), TIDEMARK_BENCH_CPUPROFILE (a directory for
// tidemark's CPU profiles), TIDEMARK_BENCH_PAIRS.

func backupBenchInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// backupRun is one backup by one tool.
type backupRun struct {
	Measurement
	stored int64 // bytes added to the repository, WAL excluded
	detail string
}

// bucketBytes adds up the objects under prefix, less those under except.
func bucketBytes(t *testing.T, srv *testenv.S3Server, bucket, prefix, except string) int64 {
	t.Helper()
	var total int64
	p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(t.Context())
		if err != nil {
			t.Fatalf("list %s/%s: %v", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			if except == "" || !strings.HasPrefix(aws.ToString(o.Key), except) {
				total += aws.ToInt64(o.Size)
			}
		}
	}
	return total
}

// quiesceArchive checkpoints and waits until all WAL written so far is
// archived, so that no backup pays for another's backlog or the load's.
func quiesceArchive(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	c.Exec(t, "CHECKPOINT")
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchivedName(t, c, seg, 30*time.Minute)
}

// backupBench is one source cluster archiving to a tidemark repository and,
// optionally, a pgBackRest stanza, both in one MinIO over TLS.
type backupBench struct {
	t        *testing.T
	srv      *testenv.S3Server
	meter    *Meter
	tm       *Tidemark
	tmBucket string
	pgbr     *PGBackRest
	pbBucket string
	c        *testenv.Cluster
	runs     int // tidemark backups, naming their profiles
}

// waitS3Initialised waits until srv answers requests: MinIO reports
// itself ready a moment before it stops answering 503
// XMinioServerNotInitialized on a loaded machine.
func waitS3Initialised(t *testing.T, srv *testenv.S3Server) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := srv.Client().ListBuckets(t.Context(), &s3.ListBucketsInput{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO does not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func newBackupBench(t *testing.T, version int, withPGBackRest bool, settings map[string]string) *backupBench {
	t.Helper()
	b := &backupBench{t: t, srv: testenv.MinIOTLS(t)}
	waitS3Initialised(t, b.srv)
	b.meter = NewMeter(t, b.srv)
	s := map[string]string{"archive_mode": "on", "archive_command": "", "max_wal_size": "8GB",
		"checkpoint_timeout": "30min", "shared_buffers": "256MB"}
	for k, v := range settings {
		s[k] = v
	}
	b.c = testenv.NewCluster(t, testenv.PGConfig{Version: version, Settings: s, Env: b.srv.Env()})
	if withPGBackRest {
		b.pbBucket = b.srv.NewBucket(t)
		b.pgbr = NewPGBackRest(t, b.srv, b.pbBucket, b.c, PGBackRestOptions{ProcessMax: 2,
			Extra: map[string]string{"beta": "y", "repo1-bundle": "y", "repo1-block": "y", "repo1-retention-full": "100"}})
	}
	b.freshTidemark()
	return b
}

// freshTidemark makes a new, empty tidemark repository the one backups
// and archive_command use: a full backup into it stores everything again.
func (b *backupBench) freshTidemark() {
	t := b.t
	if b.tm != nil {
		// Everything up to here goes to the old repository.
		quiesceArchive(t, b.c)
	}
	b.tmBucket = b.srv.NewBucket(t)
	b.tm = NewTidemark(t, b.srv, b.tmBucket)
	command := fmt.Sprintf("%s wal-push --repo %s --identity %s %%p", b.tm.Bin,
		shellQuote(strings.ReplaceAll(b.tm.URL, "%", "%%")), b.tm.Identity)
	if b.pgbr != nil {
		// pgBackRest backs up only with its own archive_command; tidemark
		// commits only once its WAL is in its repository: archive to both.
		command = b.pgbr.ArchiveCommand() + " && " + command
	}
	setArchiveCommand(t, b.c, command)
}

func (b *backupBench) tidemark(what string, args ...string) backupRun {
	t, c := b.t, b.c
	if v := os.Getenv("TIDEMARK_BENCH_REBASE_PAGES"); v != "" {
		args = append(args, "--rebase-pages", v)
	}
	if dir := os.Getenv("TIDEMARK_BENCH_CPUPROFILE"); dir != "" {
		b.runs++
		args = append(args, "--cpuprofile", filepath.Join(dir, fmt.Sprintf("tidemark-%s-%d.prof", strings.Fields(what)[0], b.runs)))
	}
	quiesceArchive(t, c)
	settle()
	before := bucketBytes(t, b.srv, b.tmBucket, "tidemark/", "tidemark/wal/")
	cmd := exec.CommandContext(t.Context(), b.tm.Bin, append([]string{"backup", "--json", "--pgdata", c.DataDir,
		"--pg-conn", c.ConnString()}, args...)...)
	cmd.Env = append(os.Environ(), b.tm.Env...)
	var out strings.Builder
	cmd.Stdout = &out
	var errb strings.Builder
	cmd.Stderr = &errb
	m := b.meter.Measure(cmd)
	if m.Err != nil {
		t.Fatalf("tidemark backup: %v\n%s", m.Err, errb.String())
	}
	var res struct {
		Method string `json:"method"`
		Stats  struct {
			ReadBytes     int64 `json:"read_bytes"`
			PatchedPages  int64 `json:"patched_pages"`
			DeltaPages    int64 `json:"delta_pages"`
			BaseReadBytes int64 `json:"base_read_bytes"`
			RebasedSlots  int64 `json:"rebased_slots"`
			ReusedFiles   int64 `json:"reused_files"`
		} `json:"stats"`
		Timing struct {
			Start, Copy, Stop, Commit float64
		} `json:"timing_seconds"`
	}
	if err := json.Unmarshal([]byte(out.String()), &struct {
		Backup any `json:"backup"`
	}{&res}); err != nil {
		t.Fatalf("tidemark backup --json: %v\n%s", err, out.String())
	}
	r := backupRun{Measurement: m, stored: bucketBytes(t, b.srv, b.tmBucket, "tidemark/", "tidemark/wal/") - before}
	r.detail = fmt.Sprintf("%s: %s, read %.0f MiB, %d pages in patches (%d as deltas, %.0f MiB of base slots read back), "+
		"%d slots rewritten whole, %d files reused unread; start %.1fs, copy %.1fs, stop %.1fs, commit %.1fs",
		what, res.Method, MiB(res.Stats.ReadBytes), res.Stats.PatchedPages, res.Stats.DeltaPages, MiB(res.Stats.BaseReadBytes),
		res.Stats.RebasedSlots, res.Stats.ReusedFiles,
		res.Timing.Start, res.Timing.Copy, res.Timing.Stop, res.Timing.Commit)
	t.Logf("tidemark %s in %s, CPU %s + store %s", r.detail, r.Wall.Round(10*time.Millisecond),
		r.CPU.Round(10*time.Millisecond), r.StoreCPU.Round(10*time.Millisecond))
	return r
}

func (b *backupBench) pgbackrest(typ string) backupRun {
	t, c := b.t, b.c
	quiesceArchive(t, c)
	settle()
	before := bucketBytes(t, b.srv, b.pbBucket, "pgbackrest/backup/", "")
	m := b.meter.Measure(b.pgbr.Command(t.Context(), c, "--type="+typ, "backup"))
	if m.Err != nil {
		t.Fatalf("pgbackrest backup --type=%s: %v", typ, m.Err)
	}
	t.Logf("pgbackrest %s in %s, CPU %s + store %s", typ, m.Wall.Round(10*time.Millisecond),
		m.CPU.Round(10*time.Millisecond), m.StoreCPU.Round(10*time.Millisecond))
	return backupRun{Measurement: m, stored: bucketBytes(t, b.srv, b.pbBucket, "pgbackrest/backup/", "") - before}
}

// loadBackupData makes the benchmark database and returns its size.
func loadBackupData(t *testing.T, c *testenv.Cluster, scale, rows int) string {
	t.Helper()
	start := time.Now()
	testenv.PGBenchInit(t, c, scale)
	if rows > 0 {
		testenv.LoadRandomTable(t, c, "md5", rows)
	}
	c.Exec(t, "VACUUM ANALYZE")
	size := c.QueryString(t, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
	t.Logf("loaded pgbench scale %d and %d md5 rows (%s) in %s", scale, rows, size, time.Since(start).Round(time.Second))
	return size
}

// changeBackupData updates about 1% of the accounts (one pgbench
// transaction updates one) and 1% of the md5 table.
func changeBackupData(t *testing.T, c *testenv.Cluster, scale, rows int) string {
	t.Helper()
	tx := scale * 100000 / 100
	testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 4, Jobs: 2, Transactions: tx / 4})
	what := fmt.Sprintf("%d pgbench transactions", tx)
	if rows == 0 {
		return what
	}
	if os.Getenv("TIDEMARK_BENCH_MD5_UPDATE") == "random" {
		n := testenv.UpdateRandomRows(t, c, "md5", 0.01)
		return fmt.Sprintf("%s, %d random md5 rows updated", what, n)
	}
	c.Exec(t, fmt.Sprintf("UPDATE md5 SET payload = md5(random()::text) WHERE id <= %d", rows/100))
	return fmt.Sprintf("%s, md5 rows 1..%d updated", what, rows/100)
}

// TestBenchBackup is the side-by-side run with pgBackRest.
func TestBenchBackup(t *testing.T) {
	Enabled(t)
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		testenv.Missing(t, "pgbackrest", "apt-get install --no-install-recommends pgbackrest")
	}
	scale, rows := backupBenchInt(t, "TIDEMARK_BENCH_SCALE", 100), backupBenchInt(t, "TIDEMARK_BENCH_ROWS", 10_000_000)
	pairs := Pairs(t)
	// pgBackRest 2.45 supports PostgreSQL up to 15.
	b := newBackupBench(t, 15, true, nil)
	size := loadBackupData(t, b.c, scale, rows)
	bytes, _ := strconv.ParseInt(b.c.QueryString(t, "SELECT sum(pg_database_size(datname)) FROM pg_database"), 10, 64)
	gib := GiB(bytes)

	waitQuiet(t)
	var tmFull, pbFull []backupRun
	Alternate(pairs, func(i int) Measurement {
		if i > 0 {
			b.freshTidemark()
		}
		r := b.tidemark("full")
		tmFull = append(tmFull, r)
		return r.Measurement
	}, func(int) Measurement {
		r := b.pgbackrest("full")
		pbFull = append(pbFull, r)
		return r.Measurement
	})
	var tmInc, pbInc []backupRun
	var changed string
	for range 3 {
		changed = changeBackupData(t, b.c, scale, rows)
		waitQuiet(t)
		tmInc = append(tmInc, b.tidemark("incremental"))
		pbInc = append(pbInc, b.pgbackrest("incr"))
	}

	ms := func(rs []backupRun) []Measurement {
		out := make([]Measurement, len(rs))
		for i, r := range rs {
			out[i] = r.Measurement
		}
		return out
	}
	stored := func(rs []backupRun) Series {
		s := make(Series, len(rs))
		for i, r := range rs {
			s[i] = MiB(r.stored)
		}
		return s
	}
	tab := PairTable{
		Title: fmt.Sprintf("backup: PostgreSQL 15, pgbench scale %d + %d md5 rows (%s, %.2f GiB), MinIO over TLS, %d alternating pairs; "+
			"pgBackRest 2.45 zst, process-max 2, block incremental; each incremental after %s",
			scale, rows, size, gib, pairs, changed),
		Columns: [2]string{"tidemark", "pgBackRest"},
	}
	tab.Step("full backup (tidemark: each into a fresh repository)")
	tab.AddRuns(ms(tmFull), ms(pbFull), gib, "<= 0.50x", "<= 0.50x")
	tab.Add("stored, MiB", "%.1f", stored(tmFull), stored(pbFull), "<= 1.00x")
	tab.Step("incremental backups 1-3 (one pair each)")
	tab.AddRuns(ms(tmInc), ms(pbInc), gib, "", "")
	tab.Add("stored, MiB", "%.1f", stored(tmInc), stored(pbInc), "<= 0.50x")
	Report(t, func(w io.Writer) {
		tab.Print(w)
		for _, r := range append(tmFull, tmInc...) {
			fmt.Fprintf(w, "tidemark %s\n", r.detail)
		}
	})
}
