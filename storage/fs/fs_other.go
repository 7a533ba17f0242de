//go:build !linux

package fs

import "syscall"

// renameNoReplace is only available on Linux; elsewhere Create needs link(2).
func renameNoReplace(oldpath, newpath string) error { return syscall.ENOTSUP }
