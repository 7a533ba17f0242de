package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// TestBenchFiles is the many-files benchmark: a PostgreSQL 15 cluster with
// a database of TIDEMARK_BENCH_FILES (1,000,000) small relation files (one
// page each, their own bytes, a valid checksum, an old mtime, as a
// database of many small tables and indexes has them; written beside
// PostgreSQL's own files, which it never opens), backed up to MinIO over
// TLS: a full backup, an incremental after 1% of the files changed, and a
// restore of the incremental (the command alone, not the recovery). For
// each: wall time, peak RSS of the process, requests to the object store
// (GETs the command counted, objects created), and the index's size.
// TIDEMARK_BENCH_FILES_SETS runs several sizes ("100000,1000000") to show
// how memory grows with the number of files.
func TestBenchFiles(t *testing.T) {
	Enabled(t)
	sets := []int{1_000_000}
	if s := os.Getenv("TIDEMARK_BENCH_FILES"); s != "" {
		sets = nil
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				t.Fatalf("TIDEMARK_BENCH_FILES=%q: want numbers of files", s)
			}
			sets = append(sets, n)
		}
	}
	tab := Table{Title: fmt.Sprintf("many files, PostgreSQL 15, MinIO over TLS, %d cores: full backup, incremental after 1%% of the files changed, restore", runtimeCPUs())}
	rows := map[string][]float64{}
	var order []string
	add := func(k string, v float64) {
		if _, ok := rows[k]; !ok {
			order = append(order, k)
		}
		rows[k] = append(rows[k], v)
	}
	for _, n := range sets {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r := benchFiles(t, n)
			tab.Columns = append(tab.Columns, fmt.Sprintf("%d files", n))
			for _, st := range []struct {
				name string
				s    filesStep
			}{{"full backup", r.full}, {"incremental", r.inc}, {"restore", r.restore}} {
				add(st.name+", s", st.s.m.Wall.Seconds())
				add(st.name+", peak RSS MiB", MiB(max(st.s.m.PeakTreeRSS, st.s.m.MaxRSS)))
				add(st.name+", GETs", float64(st.s.gets))
				add(st.name+", objects created", float64(st.s.created))
				add(st.name+", µs per file", float64(st.s.m.Wall.Microseconds())/float64(n))
			}
			add("index entries", float64(r.indexEntries))
			add("index in memory, MiB", MiB(r.indexMem))
			add("index in the repository, MiB", MiB(r.indexStored))
		})
	}
	for _, k := range order {
		tab.Add(k, "%.1f", rows[k]...)
	}
	var s strings.Builder
	tab.Print(&s)
	fmt.Fprintf(&s, "targets: peak RSS < 256 MiB, flat in the number of files; restore time per file within 2x of backup time per file\n")
	t.Log(s.String())
	fmt.Print(s.String())
}

type filesStep struct {
	m       Measurement
	gets    int64 // GETs the command counted (repository_gets), or -1
	created int   // objects created in the bucket
}

type filesResult struct {
	full, inc, restore filesStep
	indexEntries       int
	indexMem           int64
	indexStored        int64
}

func benchFiles(t *testing.T, n int) filesResult {
	var res filesResult
	srv := testenv.MinIOTLS(t)
	waitS3Initialised(t, srv)
	bucket := srv.NewBucket(t)
	tm := NewTidemark(t, srv, bucket)
	c := testenv.NewCluster(t, testenv.PGConfig{Version: 15, Env: tm.Env, Settings: map[string]string{
		"archive_mode": "on", "archive_command": tm.ArchiveCommand(), "max_wal_size": "4GB", "checkpoint_timeout": "30min"}})
	c.Exec(t, "CREATE DATABASE many")
	c.ExecDB(t, "many", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
	oid := c.QueryString(t, "SELECT oid FROM pg_database WHERE datname = 'many'")
	dir := filepath.Join(c.DataDir, "base", oid)
	start := time.Now()
	pgtest.WriteRelFiles(t, dir, 3000000000, n, 1)
	t.Logf("wrote %d relation files in %s", n, time.Since(start).Round(time.Second))

	objects := func() int {
		k := 0
		for range listBucket(t, srv, bucket, "tidemark/") {
			k++
		}
		return k
	}
	backup := func(what string) filesStep {
		quiesceArchive(t, c)
		settle()
		before := objects()
		cmd := exec.CommandContext(t.Context(), tm.Bin, "backup", "--json", "--pgdata", c.DataDir, "--pg-conn", c.ConnString())
		cmd.Env = append(os.Environ(), tm.Env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		m := Measure(cmd)
		if m.Err != nil {
			t.Fatalf("tidemark backup (%s): %v\n%s", what, m.Err, errb.String())
		}
		var js struct {
			Method string `json:"method"`
			Stats  struct {
				ReadBytes int64 `json:"read_bytes"`
				Gets      int64 `json:"repository_gets"`
				Reused    int64 `json:"reused_files"`
			} `json:"stats"`
		}
		if err := json.Unmarshal(out.Bytes(), &struct {
			Backup any `json:"backup"`
		}{&js}); err != nil {
			t.Fatalf("backup --json: %v\n%s", err, out.String())
		}
		st := filesStep{m: m, gets: js.Stats.Gets, created: objects() - before}
		t.Logf("%s (%s): %s, peak RSS %.0f MiB, read %.0f MiB, %d files reused, %d GETs, %d objects created",
			what, js.Method, m.Wall.Round(10*time.Millisecond), MiB(max(m.PeakTreeRSS, m.MaxRSS)), MiB(js.Stats.ReadBytes), js.Stats.Reused, st.gets, st.created)
		return st
	}
	res.full = backup("full backup")
	// 1% of the files change (new bytes, a new mtime), and some rows.
	for i := 0; i < n; i += 100 {
		pgtest.WriteRelFiles(t, dir, 3000000000+i, 1, uint64(i)+7)
		now := time.Now()
		os.Chtimes(filepath.Join(dir, strconv.Itoa(3000000000+i)), now, now)
	}
	c.ExecDB(t, "many", "UPDATE t SET v = md5(v) WHERE id % 100 = 0")
	res.inc = backup("incremental")

	// The index, as a reader loads it.
	env := map[string]string{}
	for _, kv := range tm.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	st, err := location.Open(t.Context(), tm.URL, location.Options{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(tm.Identity)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	rr, err := repo.Open(t.Context(), st, ids, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	is, err := rr.IndexStats(t.Context())
	rr.Close()
	if err != nil {
		t.Fatal(err)
	}
	res.indexEntries, res.indexMem = is.Blobs, is.MemBytes
	for oi := range listBucket(t, srv, bucket, "tidemark/index/") {
		res.indexStored += oi
	}

	quiesceArchive(t, c)
	dest := filepath.Join(testenv.SharedDir(t), "restored")
	settle()
	before := objects()
	cmd := exec.CommandContext(t.Context(), tm.Bin, "restore", "--pgdata", dest, "--target", "immediate", "--log-level", "info")
	cmd.Env = append(os.Environ(), tm.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	m := Measure(cmd)
	if m.Err != nil {
		t.Fatalf("tidemark restore: %v\n%s", m.Err, out.String())
	}
	res.restore = filesStep{m: m, gets: -1, created: objects() - before}
	t.Logf("restore: %s, peak RSS %.0f MiB\n%s", m.Wall.Round(10*time.Millisecond), MiB(max(m.PeakTreeRSS, m.MaxRSS)), out.String())
	os.RemoveAll(dest)
	return res
}

// listBucket yields the sizes of the objects under prefix.
func listBucket(t *testing.T, srv *testenv.S3Server, bucket, prefix string) iter.Seq[int64] {
	return func(yield func(int64) bool) {
		p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
		for p.HasMorePages() {
			page, err := p.NextPage(t.Context())
			if err != nil {
				t.Fatalf("list %s/%s: %v", bucket, prefix, err)
			}
			for _, o := range page.Contents {
				if !yield(aws.ToInt64(o.Size)) {
					return
				}
			}
		}
	}
}
