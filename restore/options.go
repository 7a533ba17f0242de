package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tidemarkdb/tidemark/internal/osuser"
	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
)

// Repository is what a restore reads from the repository. *repo.Repo has it.
type Repository interface {
	Snapshots(ctx context.Context, cluster uint64) ([]*repo.Snapshot, error)
	ReadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
	ReadBlobs(ctx context.Context, ids []blob.ID, fn func(id blob.ID, data []byte) error) error
	Lookup(ctx context.Context, id blob.ID) (index.Location, error)
	BlobID(k blob.Kind, data []byte) blob.ID
}

// Archive is what a restore needs to know about the WAL archive of one
// cluster: which timelines exist and how they branched, which segments are
// there, and the contents of a segment (to find the last commit time).
type Archive interface {
	// Histories returns the parsed history file of every timeline the
	// archive holds one for. Timeline 1 has none and need not be listed.
	Histories(ctx context.Context, cluster uint64) ([]pg.History, error)
	// Segments returns the complete segments archived on timeline tli with
	// a number from from on, in ascending order. .partial files are not
	// segments.
	Segments(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) ([]pg.SegNo, error)
	// ReadSegment returns the plaintext of one archived segment.
	ReadSegment(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo) ([]byte, error)
}

// Options configure one restore.
type Options struct {
	// PGData is the data directory to write. Without Delta it must not exist
	// or be empty.
	PGData string
	// Cluster is the system identifier; 0 when the repository holds one
	// cluster.
	Cluster uint64
	// Backup is a snapshot id, "latest" or "" (the newest that fits the
	// target).
	Backup string
	Target pg.RecoveryTarget
	// TablespaceMap moves tablespaces: original location -> new location.
	TablespaceMap map[string]string
	// Delta restores into an existing data directory, fetching only what
	// differs.
	Delta bool
	// Standby, when set, makes the restored server a standby: it catches
	// up from the archive and then streams from the primary, following
	// the newest timeline. It takes no recovery target.
	Standby *Standby
	// Parallel is the number of local file workers (hashing, fsync).
	// Repository reads run at the Repository's own concurrency.
	Parallel int
	// DirectIO writes runs of relation pages of directio.Min and more with
	// O_DIRECT where the file system allows, sparing the CPU the copy into
	// the page cache (on the benchmark VM, growing the cache cost up to
	// 2 s of system time per GiB written). The server started on the
	// restore then reads its data from disk. The CLI sets it by default.
	DirectIO bool
	// openDirect replaces the O_DIRECT open in tests of the fallback.
	openDirect func(p string) (directFile, error)
	// groupDeltaBytes replaces maxGroupDeltaBytes in tests of heldDeltas'
	// groups.
	groupDeltaBytes int64
	// pieceWindows replaces defaultPieceWindows in tests of the first pass
	// of a delta restore (checkPieces) over many pieces of a file.
	pieceWindows uint32
	// Owner, when set, receives every file; otherwise a restore run as root
	// gives them to the owner of the data directory (or of its parent when
	// it does not exist yet) and a restore run as another user keeps them.
	Owner *osuser.Owner
	// RestoreCommand is written as restore_command (tidemark wal-fetch ...).
	RestoreCommand string
	// SpoolDir is where wal-fetch of this data directory keeps prefetched
	// WAL. A spool left by an earlier recovery is removed before the
	// restore writes: it could serve WAL of another history.
	SpoolDir string
	Logger   *slog.Logger
	// DryRun plans and checks everything a restore would, writes nothing
	// (no lease either), and returns the plan in Result.Plan; refusals the
	// restore would meet are listed there instead of returned.
	DryRun bool
	// Rates returns the measured rates the dry run's time estimate uses
	// for the cluster, when the caller knows some (its newest drill's);
	// nil, or a nil *Measured: the chosen backup's own read rate.
	Rates func(ctx context.Context, cluster uint64) (*Measured, error)
	// Progress, when set, counts the bytes written as the restore fetches
	// (phase "fetch").
	Progress *progress.Counter
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// statfs is replaced by tests to simulate a small disk.
	statfs func(path string) (avail uint64, fsid string, err error)
}

// Standby is how a restored standby reaches its primary.
type Standby struct {
	// PrimaryConnInfo is primary_conninfo ("" leaves the standby on the
	// archive alone until one is set).
	PrimaryConnInfo string
	// SlotName is primary_slot_name ("" uses none).
	SlotName string
}

// Result says what a restore did.
type Result struct {
	Cluster  uint64
	Snapshot *repo.Snapshot
	Timeline pg.TimelineID
	// TimelineReason says why Timeline was chosen.
	TimelineReason string
	// LastRecoverable is the end of the WAL that is continuously archived
	// along Timeline from the snapshot on, and LastCommit the time of the
	// last commit record found before it (zero if none was found).
	LastRecoverable pg.LSN
	LastCommit      time.Time
	Files           int64
	Bytes           int64 // logical bytes of the restored files
	FetchedBytes    int64 // plaintext bytes read from the repository
	FetchedBlobs    int64
	WrittenBytes    int64
	SkippedFiles    int64 // delta: files that were already right
	RemovedPaths    int64 // delta: entries removed because the snapshot has none
	// DeltaPages says, for a delta restore, how the relation pages of the
	// existing files were proved or fetched; nil for a fresh restore.
	DeltaPages *DeltaPages
	Settings   []string
	Standby    bool // the server starts as a standby
	// Plan is what a dry run found (Options.DryRun); nil otherwise.
	Plan *Plan
}

// DeltaPages counts, in pages, what a delta restore's comparison of the
// existing relation files found: pages kept because their window's sum
// matched, because the slot the window holds matched (only patches
// fetched), because the window's deltas XOR back to its slot, or because
// a blob's ID matched; and pages fetched as deltas, as plain pages cut
// from a blob, as whole blobs, or zeroed.
type DeltaPages struct {
	KeptBySum    int64 `json:"kept_by_sum"`
	KeptBySlot   int64 `json:"kept_by_slot"`
	KeptByDeltas int64 `json:"kept_by_deltas"`
	KeptByBlob   int64 `json:"kept_by_blob"`
	FetchedDelta int64 `json:"fetched_delta"`
	FetchedPart  int64 `json:"fetched_part"`
	FetchedWhole int64 `json:"fetched_whole"`
	Zeroed       int64 `json:"zeroed"`
}

// ErrRefused is matched by every *RefusedError.
var ErrRefused = errors.New("restore refused")

// ErrWALMissing is matched when WAL that the chosen snapshot needs to become
// consistent is not in the archive.
var ErrWALMissing = errors.New("WAL missing from the archive")

// RefusedError is a precondition the restore refused before writing
// anything. Msg is one line that says what to do.
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string        { return e.Msg }
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

func refusef(format string, args ...any) error {
	return &RefusedError{Msg: fmt.Sprintf(format, args...)}
}

// WALMissingError names the first missing segment of the WAL a snapshot
// needs.
type WALMissingError struct {
	Snapshot string
	Segment  string
	Need     string // what the WAL is needed for
}

func (e *WALMissingError) Error() string {
	return fmt.Sprintf("WAL segment %s, needed %s, is not in the archive: check archive_command on the server and run tidemark verify, or restore another backup with --backup", e.Segment, e.Need)
}

func (e *WALMissingError) Is(target error) bool { return target == ErrWALMissing }
