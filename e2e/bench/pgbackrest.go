package bench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// PGBackRest is pgBackRest set up for one cluster with its repository in a
// bucket of an S3 server (MinIO over TLS: pgBackRest insists on TLS for S3).
type PGBackRest struct {
	Bin    string
	Config string // the config file; credentials are in it, not on command lines
	Stanza string
	Dir    string // log, lock and spool paths live here
}

// PGBackRestOptions are the settings that differ between benchmarks.
type PGBackRestOptions struct {
	// Async is archive-async=y: archive-push returns once the async process
	// has pushed the segment, which pushes ahead from the spool in parallel.
	Async      bool
	ProcessMax int               // default 2
	Extra      map[string]string // more [global] settings
}

// NewPGBackRest writes a pgBackRest config for cluster c with a repository
// under /pgbackrest in bucket of srv, and runs stanza-create. pgBackRest runs
// as the server's OS user; compress-type is zst.
func NewPGBackRest(t testing.TB, srv *testenv.S3Server, bucket string, c *testenv.Cluster, opts PGBackRestOptions) *PGBackRest {
	t.Helper()
	bin := testenv.FindBinary("pgbackrest", "TIDEMARK_PGBACKREST_BIN", "/usr/bin")
	if bin == "" {
		testenv.Missing(t, "pgBackRest", "apt-get install --no-install-recommends pgbackrest")
	}
	if srv.CAFile == "" {
		t.Fatal("pgBackRest needs an S3 server with TLS (testenv.MinIOTLS)")
	}
	u, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.SharedDir(t)
	p := &PGBackRest{Bin: bin, Config: filepath.Join(dir, "pgbackrest.conf"), Stanza: "bench", Dir: dir}
	if opts.ProcessMax == 0 {
		opts.ProcessMax = 2
	}
	async := "n"
	if opts.Async {
		async = "y"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\n")
	for _, kv := range [][2]string{
		{"repo1-type", "s3"},
		{"repo1-s3-endpoint", u.Hostname()},
		{"repo1-storage-port", u.Port()},
		{"repo1-s3-uri-style", "path"},
		{"repo1-storage-verify-tls", "n"},
		{"repo1-s3-bucket", bucket},
		{"repo1-s3-region", srv.Region},
		{"repo1-s3-key", srv.AccessKey},
		{"repo1-s3-key-secret", srv.SecretKey},
		{"repo1-path", "/pgbackrest"},
		{"compress-type", "zst"},
		{"process-max", fmt.Sprint(opts.ProcessMax)},
		{"archive-async", async},
		{"spool-path", filepath.Join(dir, "spool")},
		{"log-path", filepath.Join(dir, "log")},
		{"lock-path", filepath.Join(dir, "lock")},
		{"log-level-console", "warn"},
		{"start-fast", "y"},
	} {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	for k, v := range opts.Extra {
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	fmt.Fprintf(&b, "\n[%s]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\npg1-user=postgres\n",
		p.Stanza, c.DataDir, c.Port, c.SocketDir)
	if err := os.WriteFile(p.Config, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, dir)
	if err := Run(p.Command(t.Context(), c, "stanza-create")); err != nil {
		t.Fatal(err)
	}
	return p
}

// Command prepares a pgBackRest command run as c's server user.
func (p *PGBackRest) Command(ctx context.Context, c *testenv.Cluster, args ...string) *exec.Cmd {
	return c.Command(ctx, p.Bin, append([]string{"--config=" + p.Config, "--stanza=" + p.Stanza}, args...)...)
}

// ArchiveCommand is archive_command for this setup (it contains the word
// pgbackrest, which pgBackRest's own backup checks for).
func (p *PGBackRest) ArchiveCommand() string {
	return fmt.Sprintf("%s --config=%s --stanza=%s archive-push %%p", p.Bin, p.Config, p.Stanza)
}
