// Package testenv starts the real components tidemark's tests talk to:
// throwaway PostgreSQL clusters of a chosen major version and S3 servers
// (MinIO, versitygw) on loopback. Everything it starts is stopped and removed
// by t.Cleanup, also when the test fails.
//
// A component that is not installed fails the test with a message saying how
// to install it (scripts/deps.sh installs everything). A developer who wants
// such tests skipped instead sets TIDEMARK_TEST_SKIP_MISSING=1.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// DepsDir is where scripts/deps.sh puts components that do not come from apt
// (PostgreSQL 16-18 from npm). TIDEMARK_DEPS_DIR overrides it.
func DepsDir() string {
	if d := os.Getenv("TIDEMARK_DEPS_DIR"); d != "" {
		return d
	}
	return "/opt/tidemark"
}

// Missing reports that a component the test needs is absent: it fails the
// test with the install hint, or skips it when TIDEMARK_TEST_SKIP_MISSING is
// set.
func Missing(t testing.TB, what, hint string) {
	t.Helper()
	msg := fmt.Sprintf("%s is not installed: %s (or run: sudo bash scripts/deps.sh); "+
		"set TIDEMARK_TEST_SKIP_MISSING=1 to skip such tests", what, hint)
	if os.Getenv("TIDEMARK_TEST_SKIP_MISSING") != "" {
		t.Skip(msg)
	}
	t.Fatal(msg)
}

// FindBinary looks for an executable: the path in envVar if set, then each
// candidate directory, then $PATH, then $GOPATH/bin. It returns "" when none
// is found.
func FindBinary(name, envVar string, dirs ...string) string {
	if envVar != "" {
		if p := os.Getenv(envVar); p != "" {
			return p
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if home, err := os.UserHomeDir(); err == nil {
			gopath = filepath.Join(home, "go")
		}
	}
	if gopath != "" {
		p := filepath.Join(gopath, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
