package pg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BinSearch says where to look for PostgreSQL's programs.
type BinSearch struct {
	// Dir is a bin directory the operator named (--pg-bin): when set, the
	// search looks there and nowhere else.
	Dir string
	// PGData is a data directory whose running server's own binaries come
	// first (its postmaster.pid names the process, /proc the executable):
	// on the database host that is the build the operator runs.
	PGData string
	// Extra are further candidate directories, tried after pg_config and
	// before PATH.
	Extra []string
}

// dirs lists the candidate bin directories for major, in order.
func (s BinSearch) dirs(ctx context.Context, major int) []string {
	if s.Dir != "" {
		return []string{s.Dir}
	}
	var out []string
	if s.PGData != "" {
		if d := runningServerBin(s.PGData); d != "" {
			out = append(out, d)
		}
	}
	// pg_config --bindir of every pg_config on PATH (Debian's
	// /usr/bin/pg_config names the newest installed version only).
	for _, p := range filepath.SplitList(os.Getenv("PATH")) {
		cfg := filepath.Join(p, "pg_config")
		if !isExec(cfg) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b, err := exec.CommandContext(cctx, cfg, "--bindir").Output()
		cancel()
		if err == nil {
			out = append(out, strings.TrimSpace(string(b)))
		}
	}
	// The packagers' layouts, one directory per major version: Debian and
	// Ubuntu, then the PGDG RPMs.
	out = append(out, fmt.Sprintf("/usr/lib/postgresql/%d/bin", major), fmt.Sprintf("/usr/pgsql-%d/bin", major))
	out = append(out, s.Extra...)
	for _, p := range filepath.SplitList(os.Getenv("PATH")) {
		if p != "" {
			out = append(out, p)
		}
	}
	return slices.Compact(out)
}

// runningServerBin returns the bin directory of the postmaster running on
// pgdata, or "" when none runs (or /proc does not say).
func runningServerBin(pgdata string) string {
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return ""
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return filepath.Dir(exe)
}

// FindServerBin returns the bin directory of a PostgreSQL server of major
// version major: the first candidate of s whose postgres reports that
// version.
func FindServerBin(ctx context.Context, s BinSearch, major int) (string, error) {
	tried := s.dirs(ctx, major)
	for _, d := range tried {
		bin := filepath.Join(d, "postgres")
		if !isExec(bin) {
			continue
		}
		if m, err := ServerMajor(ctx, bin); err == nil && m == major {
			return d, nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL %d server found (looked in %s): install it, or pass --pg-bin with its bin directory", major, strings.Join(tried[:min(len(tried), 4)], ", "))
}

// FindClientBin finds a client program: beside the server in serverBin,
// then in the candidates of s for major (a named Dir does not stop the
// search here: a server build may ship no client tools), then in those of
// the other versions the packagers' layouts hold, newest first (libpq tools
// talk to older and newer servers). "" when none.
func FindClientBin(ctx context.Context, name, serverBin string, s BinSearch, major int) string {
	s.Dir = ""
	dirs := append([]string{serverBin}, s.dirs(ctx, major)...)
	others, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	rpm, _ := filepath.Glob("/usr/pgsql-*/bin")
	others = append(others, rpm...)
	slices.SortFunc(others, func(a, b string) int { return dirMajor(b) - dirMajor(a) })
	dirs = append(dirs, others...)
	for _, d := range dirs {
		if p := filepath.Join(d, name); d != "" && isExec(p) {
			return p
		}
	}
	return ""
}

// dirMajor reads the major version out of a packager's bin directory
// (/usr/lib/postgresql/17/bin, /usr/pgsql-17/bin); 0 when it has none.
func dirMajor(bin string) int {
	v := filepath.Base(filepath.Dir(bin))
	v = strings.TrimPrefix(v, "pgsql-")
	n, _ := strconv.Atoi(v)
	return n
}

// ServerMajor runs postgres -V and returns the major version it reports.
func ServerMajor(ctx context.Context, postgres string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, postgres, "-V").Output()
	if err != nil {
		return 0, fmt.Errorf("run %s -V: %w", postgres, err)
	}
	// "postgres (PostgreSQL) 17.2", "... 18beta1"
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0, fmt.Errorf("%s -V printed nothing", postgres)
	}
	v := f[len(f)-1]
	if end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' }); end >= 0 {
		v = v[:end]
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s -V printed %q, not a version", postgres, strings.TrimSpace(string(out)))
	}
	return n, nil
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
