package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// modulePath is the module whose cmd/tidemark Tidemark builds.
const modulePath = "github.com/tidemarkdb/tidemark"

// tidemarkBuild caches the one build of the CLI per test binary.
var tidemarkBuild struct {
	once sync.Once
	path string
	err  error
}

// Tidemark returns the path of a tidemark binary built from this tree's
// ./cmd/tidemark, for archive_command, restore_command and end-to-end tests.
// It is built once per test binary, into a directory the server user can
// read and execute, and removed by a later test run once this process is
// gone. TIDEMARK_TEST_BIN names a prebuilt binary to use instead.
func Tidemark(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TIDEMARK_TEST_BIN"); p != "" {
		if !isExecFile(p) {
			t.Fatalf("TIDEMARK_TEST_BIN=%s is not an executable file", p)
		}
		return p
	}
	tidemarkBuild.once.Do(func() {
		// Not the test's context: the build outlives the first caller.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		tidemarkBuild.path, tidemarkBuild.err = buildTidemark(ctx)
	})
	if tidemarkBuild.err != nil {
		t.Fatal(tidemarkBuild.err)
	}
	return tidemarkBuild.path
}

func buildTidemark(ctx context.Context) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "tidemark")); err != nil {
		return "", fmt.Errorf("build tidemark: %s/cmd/tidemark does not exist yet: %w", root, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build tidemark: the go command is not on PATH: %w", err)
	}
	tmp := os.TempDir()
	removeStaleBuilds(tmp)
	dir := filepath.Join(tmp, fmt.Sprintf("tidemark-testbin-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build tidemark: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone and the umask
	// applies: make sure the server user can get in.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("build tidemark: %w", err)
	}
	out := filepath.Join(dir, "tidemark")
	// -buildvcs=false: a checkout owned by another user or without git must
	// still build; tests do not need the stamped revision.
	cmd := exec.CommandContext(ctx, goBin, "build", "-buildvcs=false", "-o", out, "./cmd/tidemark")
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build tidemark (go build ./cmd/tidemark in %s): %w\n%s", root, err, msg)
	}
	return out, nil
}

// removeStaleBuilds deletes binaries left by test processes that have ended.
// Tests cannot remove their own at exit (there is no per-binary cleanup hook
// without a TestMain in every package), so each build sweeps its
// predecessors'.
func removeStaleBuilds(tmp string) {
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "tidemark-testbin-")
		if !ok || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid == os.Getpid() || procAlive(pid) {
			continue
		}
		os.RemoveAll(filepath.Join(tmp, e.Name()))
	}
}

// ModuleRoot finds the tidemark module's root directory from the working
// directory, which go test sets to the package under test.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && goModModule(b) == modulePath {
			return dir, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find module root: %w", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find module root: no go.mod of %s above the working directory", modulePath)
		}
		dir = parent
	}
}

// goModModule is the module path a go.mod declares.
func goModModule(b []byte) string {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
