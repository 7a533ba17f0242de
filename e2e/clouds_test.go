package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
)

// TestCloudBackends runs the life of a repository on Azure Blob Storage
// (Azurite) and Google Cloud Storage (fake-gcs-server): WAL archived by
// wal-push, two full backups, expire and gc (which must delete the first
// backup's packs), verify --read-data, and a point-in-time restore after
// the newest backup that must hold exactly the commits before the target.
func TestCloudBackends(t *testing.T) {
	backends := []string{"azure", "gcs"}
	if os.Getenv("TIDEMARK_E2E_COMPARE_S3") != "" {
		backends = append(backends, "s3") // the same run on MinIO, for the numbers
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newBackendEnv(t, backend, repo.InitOptions{PackSize: 128 << 10})
			reqs := countRequests(t, e)
			c := e.backupCluster(15, nil)
			testenv.LoadRandomTable(t, c, "data", 20000)
			c.Exec(t, "CREATE TABLE t (id serial, batch text)")
			start := time.Now()
			reqs.Store(0)
			e.backup(c, "--full")
			first, firstReqs := time.Since(start), reqs.Load()
			c.Exec(t, "UPDATE data SET payload = md5(payload)")
			start = time.Now()
			e.backup(c, "--full")
			second := time.Since(start)
			afterSecond := time.Now()
			ins := func(b string) { c.Exec(t, "INSERT INTO t (batch) SELECT $1 FROM generate_series(1, 10)", b) }
			ins("a")
			afterA := c.QueryString(t, "SELECT clock_timestamp()")
			time.Sleep(100 * time.Millisecond)
			ins("b")
			switchAndWait(t, c)

			e.mustTidemark(append([]string{"expire", "--keep-last", "1"}, e.repoArgs()...)...)
			_, packBytes := e.count("data/")
			// gc takes only packs older than its grace: on a quiet machine
			// the first backup's packs can be younger than 1 s here.
			time.Sleep(time.Until(afterSecond.Add(1500 * time.Millisecond)))
			out := e.mustTidemark(append([]string{"gc", "--json", "--grace", "1s", "--wait", "1m"}, e.repoArgs()...)...)
			var g gcJSON
			if err := fromJSON(out, "gc", &g); err != nil {
				t.Fatalf("gc --json: %v\n%s", err, out)
			}
			if _, after := e.count("data/"); g.Deleted.Packs == 0 || after >= packBytes {
				t.Fatalf("gc after expire deleted %d packs (%d -> %d bytes of data packs)\n%s", g.Deleted.Packs, packBytes, after, out)
			}
			start = time.Now()
			e.verify(0, "--read-data")
			verify := time.Since(start)

			dir := e.target("pitr")
			start = time.Now()
			reqs.Store(0)
			e.restore(dir, "--target-time", afterA, "--target-action", "promote")
			restore, restoreReqs := time.Since(start), reqs.Load()
			r := e.start(15, dir, false)
			waitRecovered(t, r)
			if got := batches(t, r); got != "a:10" {
				t.Errorf("restore to %s on %s: batches %s, want a:10", afterA, backend, got)
			}
			r.Stop()
			n, size := e.count("")
			t.Logf("%s: full backup %v (%d requests), second full %v, verify --read-data %v, restore %v (%d requests); %d objects, %d bytes after gc",
				backend, first.Round(time.Millisecond), firstReqs, second.Round(time.Millisecond), verify.Round(time.Millisecond),
				restore.Round(time.Millisecond), restoreReqs, n, size)
		})
	}
}

// countRequests puts a counting proxy between the repository URL's
// endpoint and its server, and points e at it: the requests each command
// makes are a cost (S3 and GCS bill them) that timing on loopback hides.
func countRequests(t *testing.T, e *restoreEnv) *atomic.Int64 {
	t.Helper()
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	target, err := url.Parse(q.Get("endpoint"))
	if err != nil || target.Host == "" {
		t.Fatalf("repository URL %s has no endpoint to count requests at", e.url)
	}
	n := new(atomic.Int64)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
		r.Out.URL.Path, r.Out.URL.RawPath = r.In.URL.Path, r.In.URL.RawPath
		r.Out.Host = r.In.Host // S3 signatures cover the host
	}}
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	q.Set("endpoint", p.URL+target.Path)
	u.RawQuery = q.Encode()
	e.url = u.String()
	return n
}
