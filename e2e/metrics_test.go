package e2e

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// families is one parsed exposition: a textfile or a scrape.
type families map[string]*dto.MetricFamily

func parseMetrics(t *testing.T, what string, r io.Reader) families {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("%s: not the Prometheus text format: %v", what, err)
	}
	return mfs
}

func readMetricsFile(t *testing.T, path string) families {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return parseMetrics(t, path, f)
}

func scrape(t *testing.T, url string) (families, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(t, url, resp.Body), nil
}

// value is the value of the sample of name whose labels include labels
// (name, value pairs); ok is false when there is none.
func (f families) value(name string, labels ...string) (float64, bool) {
	mf := f[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func (f families) want(t *testing.T, what, name string, want float64, labels ...string) {
	t.Helper()
	got, ok := f.value(name, labels...)
	switch {
	case !ok:
		t.Errorf("%s: no %s%v", what, name, labels)
	case math.Abs(got-want) > 1e-3*math.Max(1, math.Abs(want)):
		t.Errorf("%s: %s%v = %v, want %v", what, name, labels, got, want)
	}
}

// documentedMetrics are the metric names of the table in
// docs/operations.md ("Metrics"): the first cell of each row, which may
// name several.
func documentedMetrics(t *testing.T) []string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile("`(tidemark_[a-z_]+)")
	var names []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.HasPrefix(line, "| `tidemark_") {
			continue
		}
		first := strings.Split(line, "|")[1]
		for _, m := range name.FindAllStringSubmatch(first, -1) {
			names = append(names, m[1])
		}
	}
	if len(names) < 20 {
		t.Fatalf("found %d metric names in docs/operations.md; has its table changed form?", len(names))
	}
	return names
}

// TestMetrics runs what an operator runs (an agent with a heartbeat and a
// metrics endpoint, a backup, archiving, a drill, verify, gc, expire and
// tidemark metrics) against PostgreSQL and MinIO, and checks the values
// the endpoint and the textfiles give against what happened; then that
// every metric docs/operations.md documents is produced, and every one
// produced is documented.
func TestMetrics(t *testing.T) {
	e := backupEnv(t, true, 0)
	c := e.backupCluster(15, nil)
	dir := filepath.Join(e.shared, "metrics")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777) // the agent runs as the server's user
	prom := func(name string) string { return filepath.Join(dir, name+".prom") }
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	e.heartbeatAgent(c, "--metrics-listen", addr, "--metrics-file", prom("agent"), "--metrics-refresh", "1s")

	testenv.LoadRandomTable(t, c, "data", 5000)
	args := append([]string{"backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--metrics-file", prom("backup")}, e.repoArgs()...)
	e.mustTidemark(args...)
	snaps := e.snapshots()
	if len(snaps) != 1 {
		t.Fatalf("%d snapshots", len(snaps))
	}
	s := snaps[0]
	workload(t, c, 5)
	switchAndWait(t, c)
	res := e.drill(c, "--metrics-file", prom("drill"))
	if res.code != 0 || !res.rep.OK {
		t.Fatalf("drill exit %d: %s\n%+v", res.code, res.stderr, res.rep)
	}
	e.mustTidemark(append([]string{"verify", "--metrics-file", prom("verify")}, e.repoArgs()...)...)
	e.mustTidemark(append([]string{"gc", "--metrics-file", prom("gc")}, e.repoArgs()...)...)
	e.mustTidemark(append([]string{"expire", "--keep-last", "5", "--metrics-file", prom("expire")}, e.repoArgs()...)...)
	e.mustTidemark(append([]string{"metrics", "--metrics-file", prom("metrics")}, e.repoArgs()...)...)
	printed := parseMetrics(t, "tidemark metrics", strings.NewReader(e.mustTidemark(append([]string{"metrics"}, e.repoArgs()...)...)))

	cl := []string{"cluster", strconv.FormatUint(s.Cluster, 10)}
	url := "http://" + addr + "/metrics"
	var ep families
	waitFor(t, func() bool {
		f, err := scrape(t, url)
		if err != nil {
			return false
		}
		ep = f
		_, drilled := f.value("tidemark_drill_success", cl...)
		n, _ := f.value("tidemark_agent_archived_files_total")
		return drilled && n > 0
	})

	// The endpoint: the agent's own work, the archiver, the repository.
	ep.want(t, "endpoint", "tidemark_last_backup_timestamp_seconds", float64(s.StopTime.UnixNano())/1e9, cl...)
	ep.want(t, "endpoint", "tidemark_last_backup_new_bytes", float64(s.Stats.NewBytes), cl...)
	ep.want(t, "endpoint", "tidemark_last_backup_logical_bytes", float64(s.Stats.LogicalBytes), cl...)
	ep.want(t, "endpoint", "tidemark_snapshots", 1, cl...)
	ep.want(t, "endpoint", "tidemark_drill_success", 1, cl...)
	ep.want(t, "endpoint", "tidemark_drill_recover_seconds", res.rep.RecoverSeconds, cl...)
	if n, _ := ep.value("tidemark_agent_uploaded_files_total"); n < 1 {
		t.Errorf("endpoint: the agent uploaded %v files", n)
	}
	if ts, _ := ep.value("tidemark_heartbeat_timestamp_seconds"); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("endpoint: last heartbeat at %v", ts)
	}
	for _, name := range []string{"tidemark_archive_lag_segments", "tidemark_archive_ready_files", "tidemark_agent_queued_files", "go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := ep.value(name); !ok {
			t.Errorf("endpoint: no %s", name)
		}
	}

	// The textfiles.
	files := map[string]families{}
	for _, name := range []string{"agent", "backup", "drill", "verify", "gc", "expire", "metrics"} {
		files[name] = readMetricsFile(t, prom(name))
	}
	files["backup"].want(t, "backup.prom", "tidemark_last_backup_new_bytes", float64(s.Stats.NewBytes), cl...)
	files["backup"].want(t, "backup.prom", "tidemark_last_backup_duration_seconds", s.Stats.Seconds, cl...)
	files["drill"].want(t, "drill.prom", "tidemark_drill_success", 1, cl...)
	files["drill"].want(t, "drill.prom", "tidemark_drill_restore_seconds", res.rep.RestoreSeconds, cl...)
	files["verify"].want(t, "verify.prom", "tidemark_verify_success", 1)
	files["verify"].want(t, "verify.prom", "tidemark_verify_problems", 0)
	files["expire"].want(t, "expire.prom", "tidemark_expire_snapshots_kept", 1, cl...)
	files["metrics"].want(t, "metrics.prom", "tidemark_snapshots", 1, cl...)
	files["metrics"].want(t, "metrics.prom", "tidemark_drill_success", 1, cl...)
	printed.want(t, "tidemark metrics", "tidemark_snapshots", 1, cl...)
	if n, _ := files["agent"].value("tidemark_agent_archived_files_total"); n < 1 {
		t.Errorf("agent.prom: the agent archived %v files", n)
	}
	if n, _ := files["metrics"].value("tidemark_repository_objects", "kind", "wal"); n < 1 {
		t.Errorf("metrics.prom: %v WAL objects", n)
	}

	// The documentation and what is produced agree, both ways.
	produced := map[string]bool{}
	files["endpoint"] = ep
	for _, f := range files {
		for name := range f {
			if strings.HasPrefix(name, "tidemark_") {
				produced[name] = true
			}
		}
	}
	documented := map[string]bool{}
	for _, name := range documentedMetrics(t) {
		if strings.HasPrefix(name, "tidemark_receive_") {
			continue // wal-receive's: e2e TestReceiveRPO0 checks them
		}
		documented[name] = true
		if !produced[name] {
			t.Errorf("docs/operations.md documents %s, which no command produced", name)
		}
	}
	for name := range produced {
		if !documented[name] {
			t.Errorf("%s is produced but not documented in docs/operations.md (Metrics)", name)
		}
	}
}

// repositoryLag is the agent's lag metrics for the repository whose
// label holds endpoint (each repository's label is its store's name,
// which names the S3 endpoint).
func (f families) repositoryLag(t *testing.T, endpoint string) (files, seconds, last float64, ok bool) {
	t.Helper()
	mf := f["tidemark_archive_repository_lag_files"]
	if mf == nil {
		return 0, 0, 0, false
	}
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() != "repository" || !strings.Contains(lp.GetValue(), endpoint) {
				continue
			}
			label := []string{"repository", lp.GetValue()}
			files = m.GetGauge().GetValue()
			seconds, _ = f.value("tidemark_archive_repository_lag_seconds", label...)
			last, _ = f.value("tidemark_archive_repository_last_archived_timestamp_seconds", label...)
			return files, seconds, last, true
		}
	}
	return 0, 0, 0, false
}

// TestMetricsSecondRepository: an agent archiving into a repository on
// MinIO and a second one on versitygw serves one series of the archive
// lag per repository, on its endpoint and in its textfile. With both up
// both lags are zero; with versitygw stopped the second's lag grows (files
// and age) while the first's stays zero; once it is back the second
// catches up and its last-archived time moves on.
func TestMetricsSecondRepository(t *testing.T) {
	s := newSecondRegion(t)
	c := s.backupCluster(15, nil)
	dir := filepath.Join(s.shared, "metrics")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777) // the agent runs as the server's user
	file := filepath.Join(dir, "agent.prom")
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.heartbeatAgent(c, "--metrics-listen", addr, "--metrics-file", file)
	url := "http://" + addr + "/metrics"
	repo1, repo2 := s.minio.Endpoint, s.vgw.Endpoint

	// lags scrapes the endpoint until cond holds for the two
	// repositories' (files, seconds, last archived).
	type lag struct{ files, seconds, last float64 }
	lags := func(what string, cond func(a, b lag) bool) (lag, lag) {
		t.Helper()
		var a, b lag
		deadline := time.Now().Add(2 * time.Minute)
		for {
			f, err := scrape(t, url)
			if err == nil {
				var ok1, ok2 bool
				a.files, a.seconds, a.last, ok1 = f.repositoryLag(t, repo1)
				b.files, b.seconds, b.last, ok2 = f.repositoryLag(t, repo2)
				if n := len(f["tidemark_archive_repository_lag_files"].GetMetric()); n != 2 {
					t.Fatalf("%s: %d series of tidemark_archive_repository_lag_files, want 2 (repo, repo2)", what, n)
				}
				if ok1 && ok2 && cond(a, b) {
					t.Logf("%s: repo %+v, repo2 %+v", what, a, b)
					return a, b
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not reached in 2 minutes (scrape error %v): repo %+v, repo2 %+v", what, err, a, b)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	switchAndWait(t, c)
	_, before := lags("both up", func(a, b lag) bool {
		return a.files == 0 && b.files == 0 && a.seconds == 0 && b.seconds == 0 && a.last > 0 && b.last > 0
	})
	// The textfile carries the same two series.
	tf := readMetricsFile(t, file)
	for _, ep := range []string{repo1, repo2} {
		if _, _, _, ok := tf.repositoryLag(t, ep); !ok {
			t.Errorf("%s: no lag series for the repository at %s", file, ep)
		}
	}

	// The second repository down: its lag grows, the first's does not.
	s.vgw.Stop()
	c.Exec(t, "SELECT pg_logical_emit_message(false, 'tidemark-test', 'repo2 down')")
	c.Exec(t, "SELECT pg_switch_wal()")
	lags("repo2 down", func(a, b lag) bool { return a.files == 0 && b.files >= 1 && b.seconds > 0 })

	if err := s.vgw.Start(); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, c)
	lags("repo2 back", func(a, b lag) bool { return a.files == 0 && b.files == 0 && b.last > before.last })
}
