package restore

import "time"

// LastCommitTime returns the timestamp of the last commit or abort record
// that begins in the WAL segment seg (its whole plaintext), and whether it
// has one: the latest recovery_target_time that the WAL up to this segment
// can reach. Drills use it to choose a target inside the recoverable window
// before they restore.
func LastCommitTime(seg []byte) (time.Time, bool, error) { return lastXactTime(seg) }
