package backup

import (
	"context"
	"log/slog"
	"runtime"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// Defaults of Options.
const (
	// DefaultRebasePages: a slot is rewritten whole when more of its pages
	// than this (three quarters of the 128) would be held in patches.
	// DESIGN.md's starting point was a quarter; the backup benchmark
	// (e2e/bench, pgbench scale 100 plus 10 million md5 rows, 100,000
	// transactions) changes about half the pages of the accounts table,
	// evenly: with a quarter every slot of it was rewritten (1531 slots,
	// 92 MiB stored, more than pgBackRest's 83), with three quarters 246
	// (75 MiB), and a summary-based incremental reads only the changed
	// pages instead of everything. Restores read at most 1.75 MiB per
	// slot; the age rule below bounds how many patches a slot collects.
	DefaultRebasePages = 96
	// DefaultRebaseAge: a slot whose base blob is older than this and that
	// has patched pages is rewritten whole, spread over DefaultRebaseSpread
	// days (each slot on the day its hash picks).
	DefaultRebaseAge    = 28 * 24 * time.Hour
	DefaultRebaseSpread = 7
	// DefaultSummaryWait bounds how long a backup waits for the WAL
	// summarizer to reach the backup's start before it falls back to
	// reading page LSNs.
	DefaultSummaryWait = time.Minute
	// DefaultProgressEvery is how often Options.Progress is called.
	DefaultProgressEvery = time.Second
	// DefaultArchiveWait bounds how long a backup waits for the WAL up to
	// its stop to be archived: in pg_backup_stop, and then for the WAL
	// archive to confirm it (a standby waits for the primary's archive).
	DefaultArchiveWait = 5 * time.Minute
)

// WALArchive tells whether the WAL a backup needs for recovery is durable
// in the repository: CheckRange returns the names of the segments that
// recovery along history h needs to replay [start, stop) and that are not
// archived. *walarchive.Archive has it. The commit of a snapshot waits for
// an empty answer (repo's Writer.Commit preCommit).
type WALArchive interface {
	CheckRange(ctx context.Context, cluster uint64, h pg.History, start, stop pg.LSN) ([]string, error)
}

// Options configure one backup run.
type Options struct {
	// PGData is the cluster's data directory, read directly.
	PGData string
	// ConnString is a libpq connection string or URL; "" takes the libpq
	// environment variables (PGHOST, PGPORT, ...).
	ConnString string
	// Parallel is the number of files (and slot ranges of big files) read
	// at once; 0 means the number of CPUs.
	Parallel int
	// Full reads and stores everything instead of only what changed since
	// the parent snapshot.
	Full bool
	// SpreadCheckpoint lets pg_backup_start wait for a spread checkpoint
	// instead of asking for an immediate one.
	SpreadCheckpoint bool
	// FailOnChecksumError fails the backup (no snapshot) when a page
	// checksum fails; otherwise failures are recorded in the snapshot.
	FailOnChecksumError bool
	// Label is the backup label passed to pg_backup_start ("" for a default).
	Label string
	// WAL confirms the archived WAL before commit. Nil relies on
	// pg_backup_stop waiting for archive_command to succeed for the last
	// segment, which PostgreSQL does on a primary with archive_mode on.
	WAL WALArchive
	// MaxReadRate bounds the bytes per second read from the data
	// directory (0: unlimited), to spare a busy server's disks.
	MaxReadRate int64

	// Progress, if set, is called every ProgressEvery from a separate
	// goroutine and once at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration

	// Change detection and rebase tuning; zero values take the defaults.
	RebasePages  int
	RebaseAge    time.Duration
	RebaseSpread int
	SummaryWait  time.Duration
	ArchiveWait  time.Duration
	NoWALSummary bool // read page LSNs even when summaries (tidemark's or PostgreSQL's) cover the range
	// NoPageDeltas stores changed pages as they are instead of XORed onto
	// the page of the window's base slot (filemap.Extent.Base): no base
	// slots are read back, at the cost of larger incrementals.
	NoPageDeltas bool
	ToolVersion  string
	// DirectIO reads relation files with O_DIRECT instead of through the
	// page cache, which then keeps the database's own cached pages. It is
	// off by default because on the benchmark VM it was slower: a full
	// backup of 2.4 GiB took 9.5 s [9.1-11.2] and 5.0 CPU-s per GiB with
	// it, 6.9 s [6.8-7.0] and 4.3 CPU-s per GiB without (3 alternating
	// pairs each). A file system that refuses O_DIRECT is read through the
	// cache anyway.
	DirectIO      bool
	Logger        *slog.Logger
	Now           func() time.Time
	summaryForced func(*summary) // tests: tamper with a loaded summary
	sampleAll     bool           // tests: cross-check every page the summaries skip, not a random few
	noPGSummaries bool           // tests: leave PostgreSQL's WAL summaries out
	partMax       int            // tests: directories of more entries are parted (filemap.PartMax)
	namesBatch    int            // tests: directories of more names are listed through sorted runs (namesBatch)
}

// WorkerMemory is what one worker (Options.Parallel) holds in buffers: a
// slot being read, a patch being filled and its runs as stored
// (filemap.AppendPatchRuns), the base slots it fetches
// ahead of the window it reads (baseLookahead) and the stored bytes of
// the next bases one GET read (maxBaseRun). A command's memory limit
// counts it per worker beside the pack and read budgets.
const WorkerMemory = (3+baseLookahead)*blob.SlotSize + maxBaseRun

// Workers is the number of workers Parallel asks for: the number of CPUs
// when it is 0.
func (o Options) Workers() int {
	if o.Parallel <= 0 {
		return runtime.GOMAXPROCS(0)
	}
	return o.Parallel
}

func (o *Options) deltas() bool { return !o.NoPageDeltas }

func (o *Options) setDefaults() {
	o.Parallel = o.Workers()
	if o.RebasePages <= 0 {
		o.RebasePages = DefaultRebasePages
	}
	if o.RebaseAge <= 0 {
		o.RebaseAge = DefaultRebaseAge
	}
	if o.RebaseSpread <= 0 {
		o.RebaseSpread = DefaultRebaseSpread
	}
	if o.SummaryWait <= 0 {
		o.SummaryWait = DefaultSummaryWait
	}
	if o.ArchiveWait <= 0 {
		o.ArchiveWait = DefaultArchiveWait
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = DefaultProgressEvery
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.partMax <= 0 {
		o.partMax = filemap.PartMax
	}
	if o.Label == "" {
		o.Label = "tidemark"
	}
}

// Change detection methods, as reported in Result.Method.
const (
	MethodFull           = "full"            // everything read and stored
	MethodSummaries      = "wal-summaries"   // PostgreSQL 17+ WAL summaries
	MethodBlockSummaries = "block-summaries" // tidemark's block summaries beside the archived WAL
	MethodLSNScan        = "lsn-scan"        // every page's LSN compared
	methodWholeFiles     = "whole"           // internal: capture every file whole
)

// Result is what a committed backup did.
type Result struct {
	Snapshot *repo.Snapshot
	Key      string // the snapshot's object key
	// Method is how changes were found: MethodFull, MethodBlockSummaries,
	// MethodSummaries or MethodLSNScan. Fallback says why a cheaper method
	// was not used.
	Method   string
	Fallback string
	// Sources are the summaries an incremental considered: which it used,
	// and why the others were not.
	Sources []ChangeSource
	Parent  *repo.Snapshot // nil for a full backup
	Stats   Stats
	Timing  Timing
}

// ChangeSource is one source of changed pages an incremental considered.
type ChangeSource struct {
	Method string `json:"method"` // MethodBlockSummaries or MethodSummaries
	Used   bool   `json:"used"`
	// Pages estimates the pages the source says to read (listed blocks,
	// and the files past a truncation or in a new directory); Summaries is
	// how many summaries it took. Both are 0 when it was not usable.
	Pages     int64  `json:"pages"`
	Summaries int    `json:"summaries"`
	Reason    string `json:"why_not,omitempty"`
}

// Timing is where a backup's time went.
type Timing struct {
	Start  time.Duration // connecting, pg_backup_start (its checkpoint), choosing the method
	Copy   time.Duration // reading and storing the files
	Stop   time.Duration // pg_backup_stop
	Commit time.Duration // the last uploads, confirming the WAL, the snapshot
}

// Stats count a run's work.
type Stats struct {
	Files           int64 `json:"files"`                 // files in the snapshot
	RelFiles        int64 `json:"relation_files"`        // relation files among them
	ReusedFiles     int64 `json:"reused_files"`          // files whose parent entry was reused unread
	LogicalBytes    int64 `json:"logical_bytes"`         // bytes of the files in the snapshot
	ReadBytes       int64 `json:"read_bytes"`            // bytes read from the data directory
	DirectBytes     int64 `json:"direct_read_bytes"`     // of those, read with O_DIRECT (Options.DirectIO)
	PatchedPages    int64 `json:"patched_pages"`         // pages stored in patches
	DeltaPages      int64 `json:"delta_pages"`           // of those, stored XORed onto their base slot's page
	BaseReadBytes   int64 `json:"base_read_bytes"`       // bytes of base slots fetched back from the repository for deltas (stored bytes in whole encrypted chunks)
	SummedWindows   int64 `json:"summed_windows"`        // windows holding patch pages that got a sum (filemap.SlotSum) a delta restore checks with one hash
	UnsummedWindows int64 `json:"unsummed_windows"`      // windows holding patch pages left without one (reads for it would not scale with the changes)
	RepoReadBytes   int64 `json:"repository_read_bytes"` // bytes read from the repository in all (index, trees, page maps, bases, summaries)
	RepoGets        int64 `json:"repository_gets"`       // GET requests to the repository
	RebasedSlots    int64 `json:"rebased_slots"`         // slots rewritten whole by the rebase rule
	SampledPages    int64 `json:"sampled_pages"`         // pages read to cross-check WAL summaries
	NewBytes        int64 `json:"new_bytes"`             // bytes newly stored (compressed), data and metadata
	NewBlobs        int64 `json:"new_blobs"`
	ReusedPacks     int   `json:"reused_packs"`   // packs of reused blobs re-checked before commit
	ChecksumPages   int64 `json:"verified_pages"` // pages whose checksum was verified
}
