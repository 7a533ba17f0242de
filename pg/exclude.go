package pg

import (
	"strings"
)

// BackupAction is what a base backup does with an entry of PGDATA or of a
// tablespace.
type BackupAction int

const (
	// BackupInclude copies the file, or descends into the directory.
	BackupInclude BackupAction = iota
	// BackupEmptyDir records the directory but none of its contents:
	// PostgreSQL needs it to exist at startup but rebuilds or discards what
	// it held.
	BackupEmptyDir
	// BackupSkip leaves the entry out entirely.
	BackupSkip
)

func (a BackupAction) String() string {
	switch a {
	case BackupInclude:
		return "include"
	case BackupEmptyDir:
		return "empty directory"
	case BackupSkip:
		return "skip"
	}
	return "BackupAction(?)"
}

// The lists below follow DESIGN.md section 3 and PostgreSQL's own base backup
// (excludeDirContents and excludeFiles in src/backend/backup/basebackup.c).
// They are functions, not variables, so no caller can change them for
// another.

// BackupEmptiedDirs returns the PGDATA directories whose contents a backup
// leaves out while keeping the directory: state that is meaningless after a
// restore (replication slots, shared memory segments, notification queues,
// serializable and snapshot exports, statistics temp files, subtransaction
// state) and pg_wal, whose WAL is archived separately.
func BackupEmptiedDirs() []string {
	return []string{
		"pg_dynshmem",
		"pg_notify",
		"pg_replslot",
		"pg_serial",
		"pg_snapshots",
		"pg_stat_tmp",
		"pg_subtrans",
		"pg_wal",
	}
}

// BackupExcludedFiles returns the top-level PGDATA files a backup leaves
// out: the lock and options files of the running server, a stale
// backup_label, tablespace_map or backup_manifest from an earlier backup
// (the backup's own come from pg_backup_stop), recovery signal files (a
// restore writes its own), and temporary files PostgreSQL renames into
// place.
func BackupExcludedFiles() []string {
	return []string{
		"backup_label",
		"backup_manifest",
		"current_logfiles.tmp",
		"postgresql.auto.conf.tmp",
		"postmaster.opts",
		"postmaster.pid",
		"recovery.signal",
		"standby.signal",
		"tablespace_map",
	}
}

// RequiredEmptyDirs returns the directories a restored data directory of a
// major version must contain even though no file in them is restored:
// pg_wal's status directories (and WAL summaries from 17 on) are created by
// initdb and expected by the server.
func RequiredEmptyDirs(major int) []string {
	dirs := []string{"pg_wal", "pg_wal/archive_status"}
	if HasWALSummaries(major) {
		dirs = append(dirs, "pg_wal/summaries")
	}
	for _, d := range BackupEmptiedDirs() {
		if d != "pg_wal" {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// relcacheInitFile is RELCACHE_INIT_FILENAME. PostgreSQL rebuilds it at
// startup and writes it under temporary names that start the same way.
const relcacheInitFile = "pg_internal.init"

// tempFilePrefix is PG_TEMP_FILE_PREFIX: sort and hash spill files and
// their directories, in base/pgsql_tmp and in every tablespace.
const tempFilePrefix = "pgsql_tmp"

// ClassifyBackupPath decides what a backup does with one entry, from its
// slash-separated path relative to PGDATA (tablespace contents as
// pg_tblspc/<oid>/...) and whether it is a directory. It covers every rule
// that the path alone decides; unlogged relations also need the other names
// in their directory (UnloggedRelations, SkipUnlogged).
//
// A walker calls it for each entry before looking inside: a directory that
// is BackupEmptyDir or BackupSkip is not descended into.
func ClassifyBackupPath(path string, isDir bool) BackupAction {
	dir, name := splitPath(path)
	if strings.HasPrefix(name, tempFilePrefix) {
		return BackupSkip
	}
	if dir == "" {
		if isDir {
			for _, d := range BackupEmptiedDirs() {
				if name == d {
					if d == "pg_wal" {
						// Descend to keep archive_status and summaries.
						return BackupInclude
					}
					return BackupEmptyDir
				}
			}
			return BackupInclude
		}
		for _, f := range BackupExcludedFiles() {
			if name == f {
				return BackupSkip
			}
		}
		return BackupInclude
	}
	if dir == "pg_wal" {
		if isDir && (name == "archive_status" || name == "summaries") {
			return BackupEmptyDir
		}
		return BackupSkip
	}
	if !isDir && strings.HasPrefix(name, relcacheInitFile) {
		return BackupSkip
	}
	if !isDir {
		if r, ok := ParseRelPath(path); ok && r.Temp {
			return BackupSkip
		}
	}
	return BackupInclude
}

func splitPath(path string) (dir, name string) {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[:i], path[i+1:]
	}
	return "", path
}

// UnloggedRelations returns the relfilenodes in one database directory that
// have an init fork, given the names in that directory. Those are unlogged
// relations: at the end of recovery PostgreSQL resets each one by copying
// its init fork over the main fork and dropping the rest, so a backup takes
// only the init fork (ResetUnloggedRelations).
func UnloggedRelations(names []string) map[uint32]bool {
	var set map[uint32]bool
	for _, name := range names {
		var r RelFile
		if !strings.HasSuffix(name, "_init") || !parseRelFileName(name, &r) || r.Temp || r.Fork != ForkInit {
			continue
		}
		if set == nil {
			set = make(map[uint32]bool)
		}
		set[r.RelNumber] = true
	}
	return set
}

// SkipUnlogged reports whether a backup leaves out the file called name in a
// database directory whose unlogged relations are unlogged (from
// UnloggedRelations): every fork but init of an unlogged relation.
func SkipUnlogged(name string, unlogged map[uint32]bool) bool {
	if len(unlogged) == 0 {
		return false
	}
	var r RelFile
	if !parseRelFileName(name, &r) || r.Temp {
		return false
	}
	return unlogged[r.RelNumber] && r.Fork != ForkInit
}
