package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// contribUnits returns the shipped unit files, copied into a directory with
// the binary path of their ExecStart= lines pointing at bin (systemd-analyze
// verify checks that the program exists).
func contribUnits(t *testing.T, bin string) (dir string, units []string) {
	t.Helper()
	src, err := filepath.Glob("../../contrib/systemd/tidemark-*")
	if err != nil || len(src) < 7 {
		t.Fatalf("contrib/systemd: %v %v", src, err)
	}
	dir = t.TempDir()
	for _, p := range src {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/tidemark"), []byte(bin))
		dst := filepath.Join(dir, filepath.Base(p))
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, dst)
	}
	return dir, units
}

// TestSystemdUnits: every unit in contrib/systemd passes systemd-analyze
// verify without a word of complaint (unknown keys are only warnings
// there), and the agent unit's command line starts an agent with the
// example config (adapted to a test cluster and repository) that keeps
// running and writes its metrics file, then stops cleanly on SIGTERM.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Missing(t, "systemd-analyze", "apt-get install systemd (scripts/deps.sh does)")
		return
	}
	bin := testenv.Tidemark(t)
	dir, units := contribUnits(t, bin)

	// A container may forbid what systemd-analyze needs: a trivial unit
	// tells that apart from a fault in ours.
	probe := filepath.Join(dir, "probe.service")
	os.WriteFile(probe, []byte("[Service]\nType=oneshot\nExecStart=/bin/true\n"), 0o644)
	if out, err := exec.Command(analyze, "verify", probe).CombinedOutput(); err != nil {
		t.Skipf("systemd-analyze verify cannot run here: %v: %s", err, out)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify contrib/systemd: %v\n%s", err, out)
	}

	t.Run("agent starts with the example config", func(t *testing.T) {
		testAgentUnitStarts(t, bin, filepath.Join(dir, "tidemark-agent.service"))
	})
}

func testAgentUnitStarts(t *testing.T, bin, unit string) {
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("the agent unit has no ExecStart=")
	}
	args := strings.Fields(string(m[1]))
	if args[0] != bin || len(args) < 2 || args[1] != "agent" {
		t.Fatalf("ExecStart=%s", m[1])
	}

	shared := testenv.SharedDir(t)
	c := testenv.NewCluster(t, testenv.PGConfig{})
	repoDir := filepath.Join(shared, "repo")
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idPath := filepath.Join(shared, "identity.txt")
	os.WriteFile(idPath, []byte(id.String()+"\n"), 0o600)
	st, err := location.Open(t.Context(), "file://"+repoDir, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := repo.ParseRecipient(id.Recipient().String(), "test")
	r, _, err := repo.Init(t.Context(), st, repo.InitOptions{Key: spec})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()

	// The example config with this test's repository, identity, data
	// directory; everything else as shipped (heartbeat = 5s included).
	ex, err := os.ReadFile("../../contrib/tidemark.conf.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(ex)
	for _, kv := range [][2]string{
		{`(?m)^repo = .*$`, "repo = file://" + repoDir},
		{`(?m)^identity = .*$`, "identity = " + idPath},
		{`(?m)^pgdata = .*$`, "pgdata = " + c.DataDir},
	} {
		re := regexp.MustCompile(kv[0])
		if !re.MatchString(cfg) {
			t.Fatalf("the example config has no line %s", kv[0])
		}
		cfg = re.ReplaceAllString(cfg, kv[1])
	}
	cfgPath := filepath.Join(shared, "tidemark.conf")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	metricsDir := filepath.Join(shared, "node-exporter")
	os.Mkdir(metricsDir, 0o755)
	promFile := filepath.Join(metricsDir, "tidemark-agent.prom")
	for i, a := range args {
		if strings.HasPrefix(a, "/var/lib/prometheus/node-exporter/") {
			args[i] = filepath.Join(metricsDir, filepath.Base(a))
		}
	}
	testenv.ChownToServer(t, shared)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, args[0], args[1:]...)
	// As the unit's environment would: the config file by its default
	// name is replaced by this one; the working directory is /.
	cmd.Env = append(cmd.Env, "TIDEMARK_CONFIG="+cfgPath)
	cmd.Dir = "/"
	var logBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case err := <-exited:
			t.Fatalf("the agent exited (%v) with the unit's command line and the example config:\n%s", err, logBuf.String())
		case <-time.After(100 * time.Millisecond):
		}
		b, _ := os.ReadFile(promFile)
		// The heartbeat (heartbeat = 5s in the example) has run: the
		// example's [agent] section works as shipped.
		if bytes.Contains(b, []byte("tidemark_heartbeat_timestamp_seconds")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat in %s after a minute; agent log:\n%s", promFile, logBuf.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		t.Fatalf("the agent did not stop cleanly on SIGTERM: %v\n%s", err, logBuf.String())
	}
}
