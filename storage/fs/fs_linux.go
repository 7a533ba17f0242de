package fs

import "golang.org/x/sys/unix"

// renameNoReplace is the Create fallback for file systems without hard
// links: an atomic rename that fails with EEXIST instead of replacing.
func renameNoReplace(oldpath, newpath string) error {
	return unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
}
