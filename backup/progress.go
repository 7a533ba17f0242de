package backup

import (
	"fmt"
	"time"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
)

// Phases of a backup, as reported in Progress.Phase.
const (
	PhaseStart   = "start"   // pg_backup_start: waiting for the checkpoint
	PhaseChanges = "changes" // reading WAL summaries
	PhaseCopy    = "copy"    // reading and storing files
	PhaseStop    = "stop"    // pg_backup_stop: waiting for the WAL archive
	PhaseCommit  = "commit"  // flushing, confirming WAL, writing the snapshot
	PhaseDone    = "done"
)

// Progress is a backup's state for progress displays and log lines.
type Progress struct {
	Phase   string
	Method  string
	Elapsed time.Duration
	// TotalBytes estimates the bytes of files the backup considers; DoneBytes
	// of them are done (read, or known unchanged without reading).
	TotalBytes, DoneBytes int64
	ReadBytes             int64 // read from the data directory
	StoredBytes           int64 // newly stored, compressed
	Files                 int64
	// Rate is DoneBytes per second of copying; ETA the copy time left at
	// that rate (0 when unknown).
	Rate float64
	ETA  time.Duration
	// Final is set on the last report of a run, successful or not.
	Final bool
}

// String is a one-line summary for a terminal.
func (p Progress) String() string {
	switch p.Phase {
	case PhaseCopy:
		pct := 0.0
		if p.TotalBytes > 0 {
			pct = 100 * float64(p.DoneBytes) / float64(p.TotalBytes)
		}
		s := fmt.Sprintf("%s %5.1f%% %s of %s, read %s, stored %s, %s/s",
			p.Method, min(pct, 100), bytesize.Format(p.DoneBytes), bytesize.Format(p.TotalBytes),
			bytesize.Format(p.ReadBytes), bytesize.Format(p.StoredBytes), bytesize.Format(int64(p.Rate)))
		if p.ETA > 0 {
			s += ", eta " + p.ETA.Round(time.Second).String()
		}
		return s
	case PhaseStart:
		return "waiting for the checkpoint (pg_backup_start)"
	case PhaseChanges:
		return "reading WAL summaries"
	case PhaseStop:
		return fmt.Sprintf("stored %s; waiting for the WAL archive (pg_backup_stop)", bytesize.Format(p.StoredBytes))
	case PhaseCommit:
		return fmt.Sprintf("stored %s; committing", bytesize.Format(p.StoredBytes))
	}
	return fmt.Sprintf("done: %s stored in %s", bytesize.Format(p.StoredBytes), p.Elapsed.Round(time.Millisecond))
}
