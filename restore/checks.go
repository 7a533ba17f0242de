package restore

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/tidemarkdb/tidemark/internal/osuser"
	"github.com/tidemarkdb/tidemark/pg"
)

// runningServer returns the pid of a live postmaster that owns pgdata, or
// 0. postmaster.pid outlives a crash, so the pid it names must be alive and
// be a PostgreSQL process (where /proc can tell) to count.
func runningServer(pgdata string) (int, error) {
	f, err := os.Open(filepath.Join(pgdata, "postmaster.pid"))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", filepath.Join(pgdata, "postmaster.pid"), err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	if err != nil || pid <= 0 {
		return 0, nil
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return 0, nil
	}
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		c := strings.TrimSpace(string(comm))
		if c != "postgres" && c != "postmaster" {
			return 0, nil
		}
	}
	return pid, nil
}

// dirState says whether a directory exists and what is in it.
type dirState struct {
	exists  bool
	entries []string
}

func inspectDir(p string) (dirState, error) {
	ents, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return dirState{}, nil
	}
	if err != nil {
		return dirState{}, fmt.Errorf("read directory %s: %w", p, err)
	}
	st := dirState{exists: true}
	for _, e := range ents {
		st.entries = append(st.entries, e.Name())
	}
	return st, nil
}

// statfs returns the bytes available to an unprivileged writer in the file
// system holding p (or its nearest existing parent) and an identifier of
// that file system.
func statfs(p string) (uint64, string, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(p, &st)
		if err == nil {
			return st.Bavail * uint64(st.Bsize), fmt.Sprint(st.Fsid), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return 0, "", fmt.Errorf("statfs %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return 0, "", fmt.Errorf("statfs %s: %w", p, err)
		}
		p = parent
	}
}

// resolveOwner decides who owns the restored files. Only root can give
// files away; it gives them to the data directory's owner (or its parent's
// when it does not exist yet), never to root, since PostgreSQL refuses to
// run as root.
func resolveOwner(opt *osuser.Owner, pgdata string) (*osuser.Owner, error) {
	if opt != nil {
		return opt, nil
	}
	if os.Geteuid() != 0 {
		return nil, nil
	}
	p := pgdata
	for {
		var st syscall.Stat_t
		err := syscall.Stat(p, &st)
		if err == nil {
			if st.Uid == 0 {
				return nil, refusef("restoring as root into %s, which belongs to root: PostgreSQL cannot run as root; pass --owner USER (the server's OS user) or create %s owned by that user", p, pgdata)
			}
			return &osuser.Owner{UID: int(st.Uid), GID: int(st.Gid)}, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("stat %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil, fmt.Errorf("stat %s: %w", p, err)
		}
		p = parent
	}
}

// humanBytes formats a byte count for messages.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// existingControl reads the pg_control of an existing data directory, if
// it has a readable one.
func existingControl(pgdata string) *pg.ControlFile {
	cf, err := pg.ReadControlFileAt(pgdata)
	if err != nil {
		return nil
	}
	return cf
}

// allocatedOnDisk is the space an existing file takes, 0 when it does not
// exist.
func allocatedOnDisk(p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// allocatedUnder is the space the files under directory p take (0 when it
// does not exist): what a delta restore there may reuse.
func allocatedUnder(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n += allocatedOnDisk(path)
		}
		return nil
	})
	return n
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

func syncDirIfExists(p string) error {
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return syncDir(p)
}
