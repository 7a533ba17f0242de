package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterVersions starts one cluster of each supported major version.
// Even versions run without data checksums, so both initdb paths (18 turned
// them on by default) are covered.
func TestClusterVersions(t *testing.T) {
	for _, v := range []int{13, 14, 15, 16, 17, 18} {
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			t.Parallel()
			settings := map[string]string{"work_mem": "5MB"}
			if v >= 17 {
				settings["summarize_wal"] = "on"
			}
			checksums := v%2 == 1
			c := NewCluster(t, PGConfig{Version: v, Settings: settings, DataChecksums: &checksums})

			var num int
			c.QueryRow(t, "SELECT current_setting('server_version_num')::int").Scan(&num)
			if num/10000 != v {
				t.Fatalf("server_version_num = %d, want major %d", num, v)
			}
			want := map[string]string{
				"work_mem":         "5MB",
				"data_checksums":   map[bool]string{true: "on", false: "off"}[checksums],
				"wal_level":        "replica",
				"port":             strconv.Itoa(c.Port),
				"listen_addresses": "127.0.0.1",
			}
			if v >= 17 {
				want["summarize_wal"] = "on"
			}
			for name, val := range want {
				if got := c.QueryString(t, "SHOW "+name); got != val {
					t.Errorf("SHOW %s = %q, want %q", name, got, val)
				}
			}

			c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
			c.Exec(t, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, $1::int) AS g", 100)
			var n int64
			c.QueryRow(t, "SELECT count(*) FROM t WHERE v LIKE $1", "v%").Scan(&n)
			if n != 100 {
				t.Fatalf("count = %d, want 100", n)
			}

			// The client tools of 15 serve every version; file-format tools
			// only their own.
			psql := c.ClientBin("psql")
			out, err := exec.Command(psql, "-X", "-Atc", "SELECT count(*) FROM t", c.ConnString()).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "100" {
				t.Fatalf("%s: %v: %s", psql, err, out)
			}
			if p, ok := c.OwnClientBin("pg_controldata"); ok {
				out, err := c.Command(t.Context(), p, c.DataDir).CombinedOutput()
				if err != nil || !strings.Contains(string(out), "pg_control version number") {
					t.Fatalf("%s: %v: %s", p, err, out)
				}
			} else if v == 15 {
				t.Errorf("PostgreSQL 15 has no pg_controldata of its own in %s", c.Bin(""))
			}

			c.Stop()
			if c.Running() {
				t.Fatal("still running after Stop")
			}
			if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); !os.IsNotExist(err) {
				t.Fatalf("postmaster.pid after Stop: %v", err)
			}
		})
	}
}

// TestAdoptDataDir stops a cluster, turns its data directory into a standby
// and starts it with AdoptDataDir on a port of its own, then promotes it.
func TestAdoptDataDir(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, PGConfig{})
	LoadRandomTable(t, c, "r", 1000)
	want := DatabaseFingerprint(t, c)
	c.Stop()

	if err := os.WriteFile(filepath.Join(c.DataDir, "standby.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := AdoptDataDir(t, c.Version, c.DataDir, PGConfig{Settings: map[string]string{"work_mem": "7MB"}})
	if got := a.QueryString(t, "SHOW port"); got != strconv.Itoa(a.Port) {
		t.Errorf("port = %s, want %d (postgresql.conf says %d)", got, a.Port, c.Port)
	}
	if got := a.QueryString(t, "SHOW work_mem"); got != "7MB" {
		t.Errorf("work_mem = %s, want 7MB from the command line", got)
	}
	if !a.InRecovery(t) {
		t.Fatal("adopted standby is not in recovery")
	}
	if got := DatabaseFingerprint(t, a); got != want {
		t.Fatalf("fingerprint of the adopted directory %s, want %s", got, want)
	}
	a.Promote()
	if a.InRecovery(t) {
		t.Fatal("still in recovery after Promote")
	}
	a.Exec(t, "INSERT INTO r VALUES (0, 'after promotion')")
	a.Restart()
	if n := a.QueryString(t, "SELECT count(*) FROM r"); n != "1001" {
		t.Fatalf("rows after restart = %s, want 1001", n)
	}
}

// TestKillRecovery crashes a server and checks that committed rows survive
// crash recovery.
func TestKillRecovery(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, PGConfig{Version: 17})
	c.Exec(t, "CREATE TABLE k (id int); INSERT INTO k SELECT generate_series(1, 5000)")
	pid := c.PID()
	// A backend busy in a query must die too, or it would keep the old
	// shared memory alive and block the restart.
	conn, err := c.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), "SELECT pg_sleep(60)")
		done <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for c.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'") != "1" {
		if ctx.Err() != nil {
			t.Fatal("the sleeping query never started")
		}
		time.Sleep(10 * time.Millisecond)
	}

	c.Kill()
	if c.Running() || procAlive(pid) {
		t.Fatal("postmaster alive after Kill")
	}
	if err := <-done; err == nil {
		t.Fatal("a query survived Kill")
	}
	conn.Close(context.Background())
	c.Start()
	if !strings.Contains(c.LogTail(30), "not properly shut down") {
		t.Errorf("no crash recovery in the log:\n%s", c.LogTail(30))
	}
	if n := c.QueryString(t, "SELECT count(*) FROM k"); n != "5000" {
		t.Fatalf("rows after crash recovery = %s, want 5000", n)
	}
	c.StopImmediate()
	c.Start()
	if n := c.QueryString(t, "SELECT sum(id) FROM k"); n != "12502500" {
		t.Fatalf("sum after immediate stop = %s", n)
	}
}

// TestArchiveToSharedDir checks that archive_command runs as the server user
// with PGConfig.Env and can write to a SharedDir, and that ChownToServer
// opens a root-made directory to the server user.
func TestArchiveToSharedDir(t *testing.T) {
	t.Parallel()
	shared := SharedDir(t)
	cmd := fmt.Sprintf(`test ! -f %[1]s/%%f && cp %%p %[1]s/%%f && echo "$TIDEMARK_TEST_MARK" > %[1]s/mark`, shared)
	c := NewCluster(t, PGConfig{
		Settings: map[string]string{"archive_mode": "on", "archive_command": cmd},
		Env:      []string{"TIDEMARK_TEST_MARK=from-env"},
	})
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	c.Exec(t, "CREATE TABLE a (); SELECT pg_switch_wal()")

	// pg_stat_archiver counts a segment once archive_command has returned.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for c.QueryString(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg {
		if ctx.Err() != nil {
			t.Fatalf("segment %s not archived to %s:\n%s", seg, shared, c.LogTail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	mark, err := os.ReadFile(filepath.Join(shared, "mark"))
	if err != nil || strings.TrimSpace(string(mark)) != "from-env" {
		t.Fatalf("mark = %q, %v; want from-env", mark, err)
	}
	srv := lookupServerUser(t)
	fi, err := os.Stat(filepath.Join(shared, seg))
	if err != nil {
		t.Fatal(err)
	}
	if uid := int(fi.Sys().(*syscall.Stat_t).Uid); uid != srv.uid {
		t.Errorf("archived file owned by uid %d, want the server user's %d", uid, srv.uid)
	}

	sub := filepath.Join(shared, "made-by-test")
	if err := os.MkdirAll(filepath.Join(sub, "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	ChownToServer(t, sub)
	touch := ServerCommand(t.Context(), t, nil, "touch", filepath.Join(sub, "deeper", "f"))
	if out, err := touch.CombinedOutput(); err != nil {
		t.Fatalf("server user cannot write into a chowned directory: %v: %s", err, out)
	}
}

func TestConfQuote(t *testing.T) {
	for in, want := range map[string]string{
		"on":               "'on'",
		"cp %p '/x y'":     `'cp %p ''/x y'''`,
		`C:\dir`:           `'C:\\dir'`,
		"":                 "''",
		"a 'b' \\ c %f %p": `'a ''b'' \\ c %f %p'`,
	} {
		if got := confQuote(in); got != want {
			t.Errorf("confQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestMissingVersion(t *testing.T) {
	t.Setenv("TIDEMARK_PG99_BIN", "")
	if dir, tried, ok := findPGBinDir(99); ok || len(tried) != 2 {
		t.Fatalf("findPGBinDir(99) = %q, %q, %v", dir, tried, ok)
	}
}
