package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// openPTY returns a pseudo-terminal's controller and the path of its
// terminal end.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	return ptm, fmt.Sprintf("/dev/pts/%d", n)
}

// onTerminal runs tidemark with stderr on a terminal and returns what the
// terminal showed.
func (e *restoreEnv) onTerminal(args ...string) string {
	t := e.t
	t.Helper()
	ptm, pts := openPTY(t)
	defer ptm.Close()
	tty, err := os.OpenFile(pts, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var shown bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); io.Copy(&shown, ptm) }()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), e.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, tty
	err = cmd.Run()
	tty.Close()
	// The controller reads until the terminal end is closed everywhere.
	time.Sleep(100 * time.Millisecond)
	ptm.SetReadDeadline(time.Now())
	wg.Wait()
	if err != nil {
		t.Fatalf("tidemark %v: %v\n%s%s", args, err, out.String(), shown.String())
	}
	return shown.String()
}

// TestProgressOnTerminal: restore, verify --read-data, gc and drill show
// a status line on a terminal (on PostgreSQL and MinIO, the restore slowed
// by a download limit so that it lasts a few redraws), ending with the
// final report.
func TestProgressOnTerminal(t *testing.T) {
	e := backupEnv(t, true, 0)
	c := e.backupCluster(15, nil)
	e.heartbeatAgent(c)
	testenv.LoadRandomTable(t, c, "data", 20000)
	e.backup(c)
	workload(t, c, 4)
	switchAndWait(t, c)

	shown := e.onTerminal(append([]string{"restore", "--pgdata", e.target("r"), "--max-download-rate", "512KiB"}, e.repoArgs()...)...)
	if !strings.Contains(shown, "\r\x1b[Krestore: fetch ") || !strings.Contains(shown, "%") || !strings.Contains(shown, "restore: done in") {
		t.Errorf("restore on a terminal showed:\n%q", shown)
	}
	shown = e.onTerminal(append([]string{"verify", "--read-data"}, e.repoArgs()...)...)
	if !strings.Contains(shown, "verify: done in") {
		t.Errorf("verify --read-data on a terminal showed:\n%q", shown)
	}
	shown = e.onTerminal(append([]string{"gc"}, e.repoArgs()...)...)
	if !strings.Contains(shown, "gc: done in") {
		t.Errorf("gc on a terminal showed:\n%q", shown)
	}
	scratch := filepath.Join(e.shared, "scratch")
	os.MkdirAll(scratch, 0o755)
	shown = e.onTerminal(append([]string{"drill", "--scratch-dir", scratch, "--pgdata", c.DataDir, "--log-level", "warn"}, e.repoArgs()...)...)
	if !strings.Contains(shown, "drill: ") || !strings.Contains(shown, "drill: done in") {
		t.Errorf("drill on a terminal showed:\n%q", shown)
	}
	t.Logf("drill on a terminal:\n%q", shown)
}
