package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// entry is one directory entry a backup keeps, with what lstat said. It is
// kept small: a directory's entries are held until its tree is stored.
type entry struct {
	node filemap.Node
	// emptyDir: a directory kept without its contents (pg.BackupEmptyDir).
	emptyDir bool
	// tablespace: pg_tblspc/<oid> as a symbolic link to the tablespace.
	tablespace uint32
}

// listDir lists one directory as the backup sees it: entries sorted by
// name, excluded ones left out (pg.ClassifyBackupPath, unlogged relations,
// other clusters' directories in a tablespace), entries that vanished
// between readdir and lstat skipped (PostgreSQL removes files all the time).
// ownTablespaceDir, when set, is the only entry kept (a tablespace's root).
func listDir(abs, rel, ownTablespaceDir string) ([]entry, error) {
	names, err := readNames(abs)
	if err != nil {
		return nil, err
	}
	return listNames(abs, rel, ownTablespaceDir, names, pg.UnloggedRelations(names))
}

// readNames returns the names in directory abs, sorted.
func readNames(abs string) ([]string, error) {
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", abs, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", abs, err)
	}
	slices.Sort(names)
	return names, nil
}

// listNames is listDir of the given names of directory abs (sorted), with
// the directory's unlogged relations (pg.UnloggedRelations of all its
// names).
func listNames(abs, rel, ownTablespaceDir string, names []string, unlogged map[uint32]bool) ([]entry, error) {
	out := make([]entry, 0, len(names))
	for _, name := range names {
		e, ok, err := listEntry(abs, rel, ownTablespaceDir, name, unlogged)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// listEntry is listDir of one name: ok is false for a name left out.
func listEntry(abs, rel, ownTablespaceDir, name string, unlogged map[uint32]bool) (entry, bool, error) {
	if ownTablespaceDir != "" && name != ownTablespaceDir {
		return entry{}, false, nil
	}
	e := entry{}
	erel := path.Join(rel, name)
	st, err := lstat(filepath.Join(abs, name))
	if errors.Is(err, fs.ErrNotExist) {
		return entry{}, false, nil
	}
	if err != nil {
		return entry{}, false, err
	}
	mode := st.Mode & syscall.S_IFMT
	if rel == "" && name == "pg_wal" && mode == syscall.S_IFLNK {
		// pg_wal on another disk: a backup holds it as a directory,
		// as pg_basebackup does.
		if st, err = stat(filepath.Join(abs, name)); err != nil {
			return entry{}, false, err
		}
		mode = st.Mode & syscall.S_IFMT
	}
	e.node = nodeFromStat(name, st)
	switch mode {
	case syscall.S_IFDIR:
		e.node.Type = filemap.TypeDir
	case syscall.S_IFREG:
		e.node.Type = filemap.TypeFile
	case syscall.S_IFLNK:
		e.node.Type = filemap.TypeSymlink
		target, err := os.Readlink(filepath.Join(abs, name))
		if errors.Is(err, fs.ErrNotExist) {
			return entry{}, false, nil
		}
		if err != nil {
			return entry{}, false, fmt.Errorf("read link %s: %w", filepath.Join(abs, name), err)
		}
		e.node.Target = target
		if oid, ok := pg.ParseTablespaceLink(erel); ok {
			e.tablespace = oid
		}
	default:
		return entry{}, false, nil // sockets, FIFOs, devices: nothing PostgreSQL restores
	}
	isDir := e.node.Type == filemap.TypeDir
	switch pg.ClassifyBackupPath(erel, isDir) {
	case pg.BackupSkip:
		return entry{}, false, nil
	case pg.BackupEmptyDir:
		if !isDir {
			return entry{}, false, nil
		}
		e.emptyDir = true
	}
	if e.node.Type == filemap.TypeFile && pg.SkipUnlogged(name, unlogged) {
		return entry{}, false, nil
	}
	return e, true, nil
}

func nodeFromStat(name string, st *syscall.Stat_t) filemap.Node {
	return filemap.Node{
		Name:    name,
		Mode:    st.Mode & 0o7777,
		UID:     st.Uid,
		GID:     st.Gid,
		Size:    st.Size,
		ModTime: st.Mtim.Nano(),
		Inode:   st.Ino,
	}
}

func lstat(p string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return &st, nil
}

func stat(p string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	return &st, nil
}

// scanSize adds up the bytes a backup will consider, for progress and ETA.
// It is a quick pass over metadata only; errors just end it early. It
// holds no more than a batch of names of a directory (readDirNames), never
// its entries: a directory of a million files would take 170 MiB of them.
func scanSize(abs, rel, ownTablespaceDir string) int64 {
	dn, err := readDirNames(abs, os.TempDir(), 0)
	if err != nil {
		return 0
	}
	defer dn.close()
	var n int64
	dn.each(func(name string) bool {
		e, ok, err := listEntry(abs, rel, ownTablespaceDir, name, dn.unlogged)
		switch {
		case err != nil:
			return false
		case !ok:
		case e.node.Type == filemap.TypeFile:
			n += e.node.Size
		case e.node.Type == filemap.TypeDir && !e.emptyDir:
			n += scanSize(filepath.Join(abs, name), path.Join(rel, name), "")
		}
		return true
	})
	return n
}
