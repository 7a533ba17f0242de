package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

type checkReport struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Group  string `json:"group"`
		Name   string `json:"name"`
		Status string `json:"status"`
		Detail string `json:"detail"`
		Fix    string `json:"fix"`
	} `json:"checks"`
}

func (r checkReport) status(name string) string {
	for _, c := range r.Checks {
		if c.Name == name {
			return c.Status
		}
	}
	return "absent"
}

func (r checkReport) String() string {
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "\n  %s %s: %s (fix: %s)", c.Status, c.Name, c.Detail, c.Fix)
	}
	return b.String()
}

// check runs tidemark check --json and wants its exit code.
func (e *restoreEnv) check(c *testenv.Cluster, wantCode int, args ...string) checkReport {
	e.t.Helper()
	out, errs, code := e.tidemark(append(append([]string{"check", "--json", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--switch-wait", "20s"},
		e.repoArgs()...), args...)...)
	var r checkReport
	if err := fromJSON(out, "check", &r); err != nil {
		e.t.Fatalf("check --json: %v\n%s%s", err, out, errs)
	}
	if code != wantCode {
		e.t.Fatalf("check %v: exit %d, want %d: %s\n%s", args, code, wantCode, r, errs)
	}
	if r.OK != (code == 0) {
		e.t.Errorf("check: ok %v with exit %d", r.OK, code)
	}
	r.fixesOnOneLine(e.t)
	return r
}

// fixesOnOneLine: every warning and failure says what to do, in one line.
func (r checkReport) fixesOnOneLine(t *testing.T) {
	t.Helper()
	for _, c := range r.Checks {
		if (c.Status == "warn" || c.Status == "fail") && (strings.TrimSpace(c.Fix) == "" || strings.Contains(c.Fix, "\n")) {
			t.Errorf("%s %s: the fix %q is not one line", c.Status, c.Name, c.Fix)
		}
	}
}

// TestCheck runs tidemark check against PostgreSQL 17 and MinIO: a good
// setup passes everything, the round trip included; then each bad setup
// fails (or warns) on the check that names it, with a fix, and exits 8.
func TestCheck(t *testing.T) {
	e := backupEnv(t, true, 0)
	c := e.backupCluster(17, map[string]string{"summarize_wal": "on"})

	r := e.check(c, 0)
	for _, name := range []string{"connection", "wal_level", "archive_mode", "archive_command", "max_wal_senders", "data checksums",
		"summarize_wal", "full_page_writes", "data directory access", "reachable and opened", "writable", "clock", "cluster", "round trip"} {
		if st := r.status(name); st != "pass" {
			t.Errorf("good setup: %s is %s:%s", name, st, r)
		}
	}
	if st := r.status("agent"); st != "skip" {
		t.Errorf("no agent running: %s:%s", st, r)
	}
	// The text form, and --no-switch.
	out, _, code := e.tidemark(append([]string{"check", "--no-switch", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)...)
	if code != 0 || !strings.Contains(out, "PASS  archive_command") || !strings.Contains(out, "SKIP  round trip") || !strings.Contains(out, "ok: nothing failed") {
		t.Errorf("check --no-switch: exit %d\n%s", code, out)
	}
	// The lease check leaves no lease behind.
	if n, _ := e.count("leases/check/"); n != 0 {
		t.Errorf("%d check leases left", n)
	}

	// summarize_wal off: fine, tidemark's block summaries do the same.
	c.Exec(t, "ALTER SYSTEM SET summarize_wal = off")
	c.Exec(t, "SELECT pg_reload_conf()")
	waitFor(t, func() bool { return c.QueryString(t, "SHOW summarize_wal") == "off" })
	if r := e.check(c, 0, "--no-switch"); r.status("summarize_wal") != "pass" {
		t.Errorf("summarize_wal off: %s", r)
	}

	// Another identity: the repository does not open.
	other, _ := age.GenerateX25519Identity()
	otherPath := filepath.Join(e.shared, "other.txt")
	os.WriteFile(otherPath, []byte(other.String()+"\n"), 0o600)
	out, errs, code := e.tidemark("check", "--json", "--no-switch", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--repo", e.url, "--identity", otherPath)
	var bad checkReport
	if err := fromJSON(out, "check", &bad); err != nil || code != 8 || bad.status("reachable and opened") != "fail" ||
		!strings.Contains(bad.String(), "--identity") {
		t.Errorf("wrong identity: exit %d %v:%s\n%s", code, err, bad, errs)
	}

	// archive_command archives elsewhere: that check fails, and the round
	// trip finds nothing.
	elsewhere := "file://" + filepath.Join(e.shared, "elsewhere")
	c.Exec(t, fmt.Sprintf("ALTER SYSTEM SET archive_command = '%s wal-push --repo %s %%p'", e.bin, elsewhere))
	c.Exec(t, "SELECT pg_reload_conf()")
	waitFor(t, func() bool { return strings.Contains(c.QueryString(t, "SHOW archive_command"), "elsewhere") })
	r = e.check(c, 8, "--switch-wait", "3s")
	if r.status("archive_command") != "fail" || r.status("round trip") != "fail" {
		t.Errorf("archive_command into another repository:%s", r)
	}
	// tidemark without a path: a warning.
	c.Exec(t, "ALTER SYSTEM SET archive_command = 'tidemark wal-push %p'")
	c.Exec(t, "SELECT pg_reload_conf()")
	waitFor(t, func() bool { return strings.HasPrefix(c.QueryString(t, "SHOW archive_command"), "tidemark") })
	if r := e.check(c, 0, "--no-switch"); r.status("archive_command") != "warn" {
		t.Errorf("archive_command without a path:%s", r)
	}
	c.Exec(t, "ALTER SYSTEM RESET archive_command")
	c.Exec(t, "SELECT pg_reload_conf()")

	// An OS user that cannot read PGDATA (nor the identity file).
	if os.Geteuid() == 0 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, e.bin, append([]string{"check", "--json", "--no-switch", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)...)
		cmd.Env = append(os.Environ(), e.env...)
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.Output()
		var r checkReport
		if err := fromJSON(string(out), "check", &r); err != nil || cmd.ProcessState.ExitCode() != 8 || r.status("data directory access") != "fail" {
			t.Errorf("as nobody: exit %d %v:%s", cmd.ProcessState.ExitCode(), err, r)
		}
	}

	// An agent: it answers for this data directory.
	e.heartbeatAgent(c)
	if r := e.check(c, 0, "--no-switch", "--agent"); r.status("agent") != "pass" {
		t.Errorf("agent running:%s", r)
	}
	// No agent although one is expected.
	if r := e.check(c, 8, "--no-switch", "--agent", "--socket", filepath.Join(e.shared, "no-agent.sock")); r.status("agent") != "fail" {
		t.Errorf("no agent:%s", r)
	}

	// A server set up wrong in every way a setting can be (wal_level
	// minimal, which forces archive_mode off and no WAL senders; no data
	// checksums nor wal_log_hints; full_page_writes off), and a
	// repository URL where no repository is: each check says so, with its
	// fix, and check exits 8.
	off := false
	wrong := testenv.NewCluster(t, testenv.PGConfig{DataChecksums: &off, Settings: map[string]string{
		"wal_level": "minimal", "archive_mode": "off", "max_wal_senders": "0", "archive_command": "",
		"wal_log_hints": "off", "full_page_writes": "off"}})
	empty := filepath.Join(e.shared, "empty")
	os.MkdirAll(empty, 0o755)
	out, errs, code = e.tidemark("check", "--json", "--pgdata", wrong.DataDir, "--pg-conn", wrong.ConnString(), "--repo", "file://"+empty, "--identity", e.identity)
	var w checkReport
	if err := fromJSON(out, "check", &w); err != nil || code != 8 || w.OK {
		t.Fatalf("a server set up wrong: exit %d %v:%s\n%s", code, err, w, errs)
	}
	w.fixesOnOneLine(t)
	for name, want := range map[string]string{
		"connection": "pass", "wal_level": "fail", "archive_mode": "fail", "archive_command": "fail", "max_wal_senders": "warn",
		"data checksums": "warn", "full_page_writes": "fail", "data directory access": "pass",
		"reachable and opened": "fail", "agent": "skip", "round trip": "skip",
	} {
		if st := w.status(name); st != want {
			t.Errorf("a server set up wrong: %s is %s, want %s:%s", name, st, want, w)
		}
	}
	for _, c := range w.Checks {
		if c.Name == "reachable and opened" && !strings.Contains(c.Fix, "tidemark init") {
			t.Errorf("no repository at the URL: the fix %q does not say tidemark init", c.Fix)
		}
		if c.Name == "data checksums" && !strings.Contains(c.Fix, "pg_checksums --enable") {
			t.Errorf("no checksums: the fix %q", c.Fix)
		}
	}
	// The text form: one line per check, the fix beside each failure.
	out, _, _ = e.tidemark("check", "--no-switch", "--pgdata", wrong.DataDir, "--pg-conn", wrong.ConnString(), "--repo", "file://"+empty, "--identity", e.identity)
	if !strings.Contains(out, "FAIL  wal_level") || !strings.Contains(out, "wal_level = replica") {
		t.Errorf("check of a server set up wrong, as text:\n%s", out)
	}
}
