package lease

import "strconv"

// The scopes tidemark's commands take leases in. A scope is a path: a
// command's own scope for one cluster is its kind, a slash and the cluster's
// system identifier, and listing the kind lists every cluster's. They live
// here, with the lease format, because the commands that take them are not
// the ones that wait for them: gc waits for backups, restores and verifies;
// expire for backups and restores.
const (
	// KindBackup is exclusive per cluster: one backup (or expire) at a time.
	KindBackup = "backup"
	// KindRestore is shared per cluster: restores and drills read a
	// snapshot and its WAL, so expire leaves both alone while one runs.
	KindRestore = "restore"
	// ScopeVerify is shared: a verification reads packs listed in the index
	// it loaded.
	ScopeVerify = "verify"
	// ScopeGC is exclusive: one garbage collection at a time.
	ScopeGC = "gc"
	// ScopeCheck is shared: tidemark check creates and deletes one to
	// prove the repository writable and to read the store's clock.
	ScopeCheck = "check"
)

// BackupScope is the scope that makes backups of one cluster exclusive:
// "backup/<system identifier>".
func BackupScope(cluster uint64) string { return KindBackup + "/" + strconv.FormatUint(cluster, 10) }

// RestoreScope is the scope a restore or drill holds, shared, on its
// cluster: "restore/<system identifier>".
func RestoreScope(cluster uint64) string {
	return KindRestore + "/" + strconv.FormatUint(cluster, 10)
}
