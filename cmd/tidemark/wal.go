package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
	"github.com/tidemarkdb/tidemark/wal"
)

// WAL commands: wal-push (archive_command), wal-fetch (restore_command) and
// its hidden background wal-prefetch, agent, and wal list. docs/wal.md is
// their manual.

// walExitClassifier maps the WAL archive's errors to exit codes (one of
// exitClassifiers, ahead of the storage classifier).
func walExitClassifier(err error) int {
	switch {
	case errors.Is(err, walarchive.ErrConflict), errors.Is(err, walarchive.ErrForeign),
		errors.Is(err, walarchive.ErrInvalidFile), errors.Is(err, wal.ErrMarkRefused):
		return exitRefused
	case errors.Is(err, wal.ErrMarkNotArchived):
		return exitIntegrity
	case errors.Is(err, walarchive.ErrCorrupt), errors.Is(err, repo.ErrCorrupt):
		return exitIntegrity
	case errors.Is(err, repo.ErrNoIdentity):
		return exitAccess
	case errors.Is(err, repo.ErrNotRepository), errors.Is(err, repo.ErrUnsupportedVersion):
		return exitRepository
	}
	return 0
}

// walPGDataFlag is --pgdata for the commands PostgreSQL runs in the data
// directory. It deliberately ignores $PGDATA: pg_ctl may leave a relative
// path there, which would resolve against the data directory itself.
func walPGDataFlag() cli.Flag {
	return stringFlag("pgdata", "PostgreSQL data directory (default: the working directory, which is the data directory when PostgreSQL runs the command)")
}

func retryForFlag(def time.Duration) cli.Flag {
	return &cli.DurationFlag{Name: "retry-for", Value: def, EnvVars: []string{envName("retry-for")},
		Usage: "retry transient storage failures of one operation for up to this long, then fail"}
}

func walPushCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-push",
		Usage:     "archive one WAL file (archive_command = 'tidemark wal-push %p')",
		ArgsUsage: "<path>",
		Description: "Archives the file at <path> (relative to the data directory, as PostgreSQL's %p) and exits 0 only " +
			"once it is durable in the repository. When an agent serves the data directory, it asks the agent; " +
			"otherwise, or if the agent fails, it uploads the file itself.",
		Flags: flagSet(repoFlags(), repo2Flags(), rateFlags(), []cli.Flag{
			walPGDataFlag(),
			stringFlag("socket", "the agent's socket (default PGDATA/tidemark-agent.sock)"),
			&cli.BoolFlag{Name: "no-agent", Usage: "upload without asking an agent", EnvVars: []string{envName("no-agent")}},
			&cli.DurationFlag{Name: "agent-wait", Value: 2 * time.Minute, EnvVars: []string{envName("agent-wait")},
				Usage: "how long to wait for the agent's answer before uploading the file itself"},
			retryForFlag(30 * time.Second),
		}),
		Action: walPush,
	}
}

func walPush(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if c.NArg() != 1 {
		return usageErrorf("wal-push takes one argument, the path of the file (%%p), not %d", c.NArg())
	}
	path := c.Args().First()
	pgdata, err := wal.DataDir(c.String("pgdata"))
	if err != nil {
		return err
	}
	name := filepath.Base(path)
	if !c.Bool("no-agent") && inPGWal(pgdata, path) {
		socket := c.String("socket")
		if socket == "" {
			socket = wal.DefaultSocket(pgdata)
		}
		resp, err := wal.AskAgent(c.Context, socket, wal.Request{Op: "push", Name: name, PGData: pgdata, Stores: storeNames(c)}, c.Duration("agent-wait"))
		if err == nil {
			log.Debug("archived by the agent", "file", name, "result", resp.Result)
			return nil
		}
		var ae *wal.AgentError
		switch {
		case errors.As(err, &ae) && ae.Definitive():
			return fmt.Errorf("archive %s: %w (PostgreSQL will call archive_command again)", name, err)
		case errors.Is(err, wal.ErrAgentUnreachable):
			log.Debug("no agent; uploading", "file", name, "err", err)
		case c.Context.Err() != nil:
			return c.Context.Err()
		default:
			log.Warn("the agent did not archive the file; uploading it", "file", name, "err", err)
		}
	}
	ci, err := wal.ReadCluster(pgdata)
	if err != nil {
		return err
	}
	r, arch, err := openWALArchive(c, log, c.Duration("retry-for"))
	if err != nil {
		return err
	}
	defer r.Close()
	p, closeSecond, err := pusher(c, log, arch, r, ci)
	if err != nil {
		return err
	}
	defer closeSecond()
	res, err := p.Push(c.Context, path)
	if err != nil {
		if len(p.Stores()) > 1 {
			return fmt.Errorf("%w (PostgreSQL will call archive_command again; it succeeds once both repositories have the file)", err)
		}
		return err
	}
	log.Debug("archived", "file", name, "created", res.Created, "bytes", res.Size, "stored", res.Stored, "elapsed", res.Elapsed)
	return nil
}

// inPGWal reports whether path is the file of that name in pgdata's pg_wal,
// the only files the agent archives.
func inPGWal(pgdata, path string) bool {
	a, err1 := os.Stat(path)
	b, err2 := os.Stat(filepath.Join(pgdata, "pg_wal", filepath.Base(path)))
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// openWALArchive opens the repository with the given retry bound, and its
// WAL archive. The caller closes the repository.
func openWALArchive(c *cli.Context, log *slog.Logger, retryFor time.Duration) (*repo.Repo, *walarchive.Archive, error) {
	return openWALArchiveOf(c, log, firstRepo, retryFor)
}

// openWALArchiveOf is openWALArchive of repository which.
func openWALArchiveOf(c *cli.Context, log *slog.Logger, which string, retryFor time.Duration) (*repo.Repo, *walarchive.Archive, error) {
	r, err := openRepoAt(c.Context, c, log, which, repo.Options{}, retryFor)
	if err != nil {
		return nil, nil, err
	}
	// TIDEMARK_NO_BLOCK_SUMMARIES archives as a tool without block
	// summaries would: for measuring what they cost (docs/wal.md).
	return r, walarchive.FromRepo(r, walarchive.Options{Logger: log, NoSummaries: os.Getenv("TIDEMARK_NO_BLOCK_SUMMARIES") != ""}), nil
}

// pusher is the Pusher of wal-push and the agent: into repo, and into repo2
// too when one is configured, which is opened the first time a push needs
// it (it may be unreachable when the agent starts) and checked to share
// repo's master secret. closeSecond closes it once pushing is over.
func pusher(c *cli.Context, log *slog.Logger, arch *walarchive.Archive, first *repo.Repo, ci walarchive.ClusterInfo) (p *wal.Pusher, closeSecond func(), err error) {
	p = wal.NewPusher(arch, ci, log)
	if c.String(secondRepo) == "" {
		return p, func() {}, nil
	}
	name, err := location.Name(c.String(secondRepo))
	if err != nil {
		return nil, nil, usageErrorf("--repo2: %v", err)
	}
	var mu sync.Mutex
	var second *repo.Repo
	retryFor := c.Duration("retry-for")
	p.WithSecond(name, func(ctx context.Context) (*walarchive.Archive, error) {
		r2, err := openSecondOf(ctx, c, log, first, repo.Options{}, retryFor)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		second = r2
		mu.Unlock()
		return walarchive.FromRepo(r2, walarchive.Options{Logger: log}), nil
	})
	return p, func() {
		mu.Lock()
		defer mu.Unlock()
		if second != nil {
			second.Close()
		}
	}, nil
}

// storeNames names the repositories wal-push archives to, as the agent's
// Pusher.Stores does, without opening them.
func storeNames(c *cli.Context) []string {
	var out []string
	for _, which := range []string{firstRepo, secondRepo} {
		if u := c.String(which); u != "" {
			if n, err := location.Name(u); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func walFetchFlags() []cli.Flag {
	return flagSet(repoFlags(), repo2Flags(), rateFlags(), []cli.Flag{
		walPGDataFlag(),
		stringFlag("spool-dir", "spool for prefetched WAL (default: beside the data directory, PGDATA.tidemark-spool)"),
		&cli.BoolFlag{Name: "no-spool", Usage: "fetch each file directly; no spool, no prefetch", EnvVars: []string{envName("no-spool")}},
		&cli.StringFlag{Name: "spool-token", Usage: "link each prefetched segment into the spool's ready-TOKEN directory, " +
			"for a restore_command that moves it into place with mv before it runs tidemark (tidemark restore writes one)"},
		&cli.IntFlag{Name: "prefetch", Value: 16, EnvVars: []string{envName("prefetch")},
			Usage: "segments to prefetch after the one asked for (0: no background prefetch)"},
		&cli.StringFlag{Name: "spool-max", Value: "256MiB", EnvVars: []string{envName("spool-max")},
			Usage: "bound on the prefetched bytes in the spool (e.g. 512MiB, 2GiB)"},
		&cli.IntFlag{Name: "prefetch-parallel", Value: 4, EnvVars: []string{envName("prefetch-parallel")},
			Usage: "objects the prefetcher downloads at once"},
		&cli.DurationFlag{Name: "prefetch-idle", Value: time.Minute, EnvVars: []string{envName("prefetch-idle")},
			Usage: "the prefetcher exits after this long without a request"},
		&cli.DurationFlag{Name: "list-max-age", Value: 2 * time.Second, EnvVars: []string{envName("list-max-age")},
			Usage: "answer 'not in the archive' from a listing at most this old, else list again"},
		&cli.BoolFlag{Name: "partial", EnvVars: []string{envName("partial")},
			Usage: "serve X.partial when segment X is asked for and only the partial file is archived"},
		retryForFlag(2 * time.Minute),
	})
}

func walFetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-fetch",
		Usage:     "fetch one WAL file for recovery (restore_command = 'tidemark wal-fetch %f %p')",
		ArgsUsage: "<file> <dest>",
		Description: "Exit codes: 0 delivered; 1 the file is not in the archive (PostgreSQL then ends or waits); " +
			"128 + a tidemark exit code for anything else (corruption 134, no matching key 132, storage 135), " +
			"which stops recovery instead of ending it early.",
		Flags:  walFetchFlags(),
		Action: walFetch,
	}
}

// fetchFatal is wal-fetch's exit code for a failure that must stop recovery.
func fetchFatal(err error) int {
	return walFetchFatalBase + exitCode(err)
}

func walFetch(c *cli.Context) error {
	err := walFetchRun(c)
	if err == nil {
		return nil
	}
	if errors.Is(err, walarchive.ErrNotArchived) {
		return &codedError{err: err, code: exitFailure}
	}
	return &codedError{err: err, code: fetchFatal(err)}
}

func walFetchRun(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if c.NArg() != 2 {
		return usageErrorf("wal-fetch takes two arguments, the file name (%%f) and the destination (%%p), not %d", c.NArg())
	}
	name, dest := c.Args().Get(0), c.Args().Get(1)
	opts, err := fetchOptions(c, log)
	if err != nil {
		return err
	}
	if served, err := serveSpooled(c, opts, name, dest); served || err != nil {
		return err
	}
	setMemoryLimit(streamMemory)
	spoolDir := opts.SpoolDir
	if spoolDir == "" {
		spoolDir = wal.DefaultSpoolDir(opts.PGData)
	}
	mark := wal.FallbackMarkFor(spoolDir)
	hasSecond := c.String(secondRepo) != ""
	if hasSecond && mark.Recent(fallbackFor) {
		return fetchSecond(c, log, opts, name, dest, errors.New("it was unreachable moments ago"))
	}
	start := time.Now()
	f, r, err := newFetcher(c, log, opts)
	var res wal.FetchResult
	if err == nil {
		defer r.Close()
		res, err = f.Fetch(c.Context, name, dest)
	}
	if err != nil && hasSecond && storage.IsUnavailable(err) && c.Context.Err() == nil {
		mark.Set()
		return fetchSecond(c, log, opts, name, dest, err)
	}
	if err != nil {
		return err
	}
	if hasSecond {
		mark.Clear()
	}
	log.Debug("fetched", "file", res.Name, "source", res.Source, "bytes", res.Size, "elapsed", time.Since(start))
	// Only once a segment was there: a standby that polls for the next
	// segment gets no prefetcher listing the archive for it.
	if c.Int("prefetch") > 0 && wal.IsSegment(name) && f.PrefetcherNeeded() {
		if err := spawnPrefetcher(c, f); err != nil {
			log.Warn("cannot start the prefetcher; fetching without it", "err", err)
		}
	}
	return nil
}

// fallbackFor is how long wal-fetch goes straight to the second repository
// after a call found the first unreachable (wal.FallbackMark).
const fallbackFor = time.Minute

// fetchSecond fetches name from repo2 after repo was found unreachable
// (why): directly, without spool or prefetch, which belong to repo.
func fetchSecond(c *cli.Context, log *slog.Logger, opts wal.FetchOptions, name, dest string, why error) error {
	log.Warn("repository unreachable: fetching from the second repository", "file", name,
		"first", c.String(firstRepo), "second", c.String(secondRepo), "err", why)
	r, arch, err := openWALArchiveOf(c, log, secondRepo, c.Duration("retry-for"))
	if err != nil {
		return fmt.Errorf("the first repository is unreachable (%v), and the second: %w", why, err)
	}
	defer r.Close()
	opts.NoSpool, opts.RepoID = true, r.Config().ID
	f, err := wal.NewFetcher(arch, opts)
	if err != nil {
		return err
	}
	res, err := f.Fetch(c.Context, name, dest)
	if err != nil {
		return err
	}
	log.Debug("fetched", "file", res.Name, "source", "second repository", "bytes", res.Size)
	return nil
}

// fetchOptions is what wal-fetch's flags say: where it delivers (the data
// directory, its cluster from pg_control, the spool directory, absolute or
// "" for the default beside the data directory) and how it spools.
func fetchOptions(c *cli.Context, log *slog.Logger) (wal.FetchOptions, error) {
	o := wal.FetchOptions{NoSpool: c.Bool("no-spool"), SpoolToken: c.String("spool-token"),
		Prefetch: c.Int("prefetch"), Parallel: c.Int("prefetch-parallel"),
		Partial: c.Bool("partial"), ListMaxAge: c.Duration("list-max-age"), Idle: c.Duration("prefetch-idle"),
		Logger: log}
	var err error
	if o.PGData, err = wal.DataDir(c.String("pgdata")); err != nil {
		return o, err
	}
	if o.Cluster, err = wal.ReadCluster(o.PGData); err != nil {
		return o, err
	}
	if o.SpoolDir = c.String("spool-dir"); o.SpoolDir != "" {
		if o.SpoolDir, err = filepath.Abs(o.SpoolDir); err != nil {
			return o, err
		}
	}
	if o.SpoolMax, err = bytesize.Parse(c.String("spool-max")); err != nil {
		return o, usageErrorf("--spool-max: %v", err)
	}
	return o, nil
}

// serveSpooled answers from a warm prefetch spool without opening the
// repository, when it can: with the file (wal.ServeSpooled), or with "not
// in the archive" from the spool's young listing (wal.SpoolSaysMissing).
func serveSpooled(c *cli.Context, opts wal.FetchOptions, name, dest string) (bool, error) {
	if opts.NoSpool {
		return false, nil
	}
	store, err := location.Name(c.String("repo"))
	if err != nil {
		return false, nil
	}
	if wal.ServeSpooled(opts, store, name, dest) {
		opts.Logger.Debug("fetched", "file", name, "source", "spool", "repository", "not opened")
		return true, nil
	}
	if wal.SpoolSaysMissing(opts, store, name) {
		key, _ := walarchive.Key(opts.Cluster.SystemID, name)
		opts.Logger.Debug("not archived, from the spool's listing", "file", name, "repository", "not opened")
		return false, &walarchive.NotArchivedError{Key: key, Name: name}
	}
	return false, nil
}

// newFetcher opens the repository and builds the Fetcher for opts.
func newFetcher(c *cli.Context, log *slog.Logger, opts wal.FetchOptions) (*wal.Fetcher, *repo.Repo, error) {
	r, arch, err := openWALArchive(c, log, c.Duration("retry-for"))
	if err != nil {
		return nil, nil, err
	}
	opts.RepoID = r.Config().ID
	f, err := wal.NewFetcher(arch, opts)
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	return f, r, nil
}

// spawnPrefetcher starts wal-prefetch in the background with the flags
// this call was given (wal.StartPrefetcher).
func spawnPrefetcher(c *cli.Context, f *wal.Fetcher) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	pgdata, err := wal.DataDir(c.String("pgdata"))
	if err != nil {
		return err
	}
	args := []string{"wal-prefetch", "--pgdata", pgdata, "--spool-dir", f.SpoolDir()}
	for _, fl := range c.Command.Flags {
		n := fl.Names()[0]
		if n == "pgdata" || n == "spool-dir" || !c.IsSet(n) {
			continue
		}
		switch fl.(type) {
		case *cli.StringSliceFlag:
			for _, v := range c.StringSlice(n) {
				args = append(args, "--"+n, v)
			}
		case *cli.BoolFlag:
			args = append(args, "--"+n+"="+strconv.FormatBool(c.Bool(n)))
		default:
			args = append(args, "--"+n, fmt.Sprint(c.Value(n)))
		}
	}
	return wal.StartPrefetcher(exe, args, pgdata, f.SpoolDir())
}

func walPrefetchCommand() *cli.Command {
	return &cli.Command{
		Name:   "wal-prefetch",
		Usage:  "background prefetcher started by wal-fetch",
		Hidden: true,
		Flags:  walFetchFlags(),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, c.App.ErrWriter)
			if err != nil {
				return err
			}
			opts, err := fetchOptions(c, log)
			if err != nil {
				return err
			}
			setMemoryLimit(int64(max(opts.Parallel, 1)) * streamMemory)
			f, r, err := newFetcher(c, log, opts)
			if err != nil {
				return err
			}
			defer r.Close()
			return f.Prefetch(c.Context)
		},
	}
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "upload WAL ahead of PostgreSQL and answer wal-push (runs in the foreground)",
		Description: "Watches PGDATA/pg_wal/archive_status for ready files, uploads them in parallel, oldest first, " +
			"and answers wal-push over a Unix socket once the file asked for is durable. It never renames or deletes " +
			"PostgreSQL's status files. Logs to stderr; stops cleanly on SIGTERM or SIGINT.",
		Flags: flagSet(repoFlags(), repo2Flags(), rateFlags(), []cli.Flag{
			stringFlag("pgdata", "PostgreSQL data directory (default: the working directory)", "PGDATA"),
			stringFlag("socket", "Unix socket to answer wal-push on (default PGDATA/tidemark-agent.sock)"),
			&cli.IntFlag{Name: "parallel", Value: 4, EnvVars: []string{envName("parallel")},
				Usage: "files uploaded at once; each holds its compressed file (a quarter of a segment for typical WAL, up to one) and a few 1 MiB chunks"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, EnvVars: []string{envName("shutdown-timeout")},
				Usage: "on SIGTERM, how long uploads in flight may finish before they are abandoned"},
			&cli.BoolFlag{Name: "compress-ahead", Value: true, EnvVars: []string{envName("compress-ahead")},
				Usage: "compress the segment PostgreSQL is writing as it fills, so that a ready segment has little left to do (--compress-ahead=false: only once ready)"},
			retryForFlag(30 * time.Second),
			&cli.DurationFlag{Name: "heartbeat", EnvVars: []string{envName("heartbeat")},
				Usage: "write a heartbeat row (tidemark.heartbeat) this often for restore drills to check their target against (0: off)"},
			stringFlag("pg-conn", "connection string for the heartbeat (default: libpq environment variables)"),
			stringFlag("metrics-file", "write the agent's Prometheus metrics to this file (node_exporter textfile format) every 15 s and after each heartbeat"),
			stringFlag("metrics-listen", "serve the agent's Prometheus metrics over HTTP at this address (e.g. 127.0.0.1:9187, :9187), path /metrics"),
			&cli.DurationFlag{Name: "metrics-refresh", Value: metrics.DefaultRefresh, EnvVars: []string{envName("metrics-refresh")},
				Usage: "how often the metrics read the repository state (the cluster's snapshots and newest drill report)"},
		}),
		Action: runAgent,
	}
}

func runAgent(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	pgdata, err := wal.DataDir(c.String("pgdata"))
	if err != nil {
		return err
	}
	ci, err := wal.ReadCluster(pgdata)
	if err != nil {
		return err
	}
	r, arch, err := openWALArchive(c, log, c.Duration("retry-for"))
	if err != nil {
		return err
	}
	defer r.Close()
	var am *metrics.Agent
	listen := c.String("metrics-listen")
	if c.String("metrics-file") != "" || listen != "" {
		am = metrics.NewAgent(metrics.AgentOptions{Repo: r, Cluster: ci.SystemID, Refresh: c.Duration("metrics-refresh"),
			File: c.String("metrics-file"), Logger: log})
	}
	if every := c.Duration("heartbeat"); every > 0 {
		var onBeat func(wal.Beat)
		if am != nil {
			onBeat = am.Beat
		}
		// Beside the agent, never in its way: a failing heartbeat
		// is logged and retried, archiving goes on.
		go wal.RunHeartbeat(c.Context, wal.HeartbeatOptions{ConnString: c.String("pg-conn"), Every: every, Logger: log, OnBeat: onBeat})
	}
	if listen != "" {
		addr, err := metrics.Serve(c.Context, listen, am.Handler(), log)
		if err != nil {
			return usageErrorf("%v", err)
		}
		log.Info("serving metrics", "url", "http://"+addr.String()+"/metrics")
	}
	if am != nil {
		go am.Run(c.Context)
	}
	// A long-running process next to the database: hold the heap
	// near what the uploads in flight need rather than let the
	// collector double it. An upload holds its compressed file
	// (a quarter of a segment for typical WAL) and a few 1 MiB
	// chunks; compressing ahead holds two segments' frames. For
	// incompressible WAL more is live than that and the collector
	// runs more often; nothing else changes.
	segs := int64(max(c.Int("parallel"), 1)) * int64(ci.SegSize) / 4
	aheadPoll := time.Duration(-1)
	if c.Bool("compress-ahead") {
		segs += int64(ci.SegSize)
		aheadPoll = 0 // the default
	}
	setMemoryLimit(segs)
	p, closeSecond, err := pusher(c, log, arch, r, ci)
	if err != nil {
		return err
	}
	defer closeSecond()
	a, err := wal.NewAgent(p, wal.AgentOptions{
		PGData: pgdata, Socket: c.String("socket"), Parallel: c.Int("parallel"),
		ShutdownTimeout: c.Duration("shutdown-timeout"), AheadPoll: aheadPoll, Logger: log,
	})
	if err != nil {
		return err
	}
	if am != nil {
		am.SetAgent(a)
	}
	return a.Run(c.Context)
}

func walCommand() *cli.Command {
	return &cli.Command{
		Name:  "wal",
		Usage: "inspect the WAL archive",
		Subcommands: []*cli.Command{{
			Name:  "list",
			Usage: "per cluster and timeline: the archived range and any gaps",
			Flags: flagSet(repoFlags(), []cli.Flag{
				stringFlag("cluster", "system identifier of the cluster to list (default: every cluster)"),
				&cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{envName("json")}},
			}),
			Action: walList,
		}},
	}
}

// walListJSON is wal list --json's output.
type walListJSON struct {
	Clusters []walClusterJSON `json:"clusters"`
}

type walClusterJSON struct {
	SystemID       uint64            `json:"system_identifier,string"`
	SegSize        uint32            `json:"wal_segment_size"`
	Timelines      []walTimelineJSON `json:"timelines"`
	Head           string            `json:"head,omitempty"`
	MissingHistory []pg.TimelineID   `json:"missing_history,omitempty"`
	Foreign        []string          `json:"foreign_objects,omitempty"`
	Gaps           int               `json:"gaps"`
	Segments       uint64            `json:"segments"`
	Created        *time.Time        `json:"created,omitempty"`
}

type walTimelineJSON struct {
	Timeline pg.TimelineID  `json:"timeline"`
	First    string         `json:"first,omitempty"`
	Last     string         `json:"last,omitempty"`
	Segments uint64         `json:"segments"`
	Gaps     []walRangeJSON `json:"gaps,omitempty"`
	Partial  []string       `json:"partial,omitempty"`
	Backup   []string       `json:"backup,omitempty"`
	History  bool           `json:"history"`
	// Where the timeline branched off, and wal-receive's tail (receive.go).
	BranchedFrom pg.TimelineID    `json:"branched_from,omitempty"`
	ForkLSN      *pg.LSN          `json:"fork_lsn,omitempty"`
	Streamed     *walStreamedJSON `json:"streamed,omitempty"`
}

type walRangeJSON struct {
	First string `json:"first"`
	Last  string `json:"last"`
	Count uint64 `json:"count"`
}

func walList(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	r, arch, err := openWALArchive(c, log, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	var clusters []uint64
	if s := c.String("cluster"); s != "" {
		id, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return usageErrorf("--cluster %q: want a system identifier (pg_controldata's \"Database system identifier\")", s)
		}
		clusters = []uint64{id}
	} else if clusters, err = arch.Clusters(c.Context); err != nil {
		return err
	}
	var out walListJSON
	for _, id := range clusters {
		l, err := arch.List(c.Context, id)
		if err != nil {
			return err
		}
		if err := arch.Forks(c.Context, l); err != nil {
			return err
		}
		out.Clusters = append(out.Clusters, describeListing(l))
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "wal", out)
	}
	return printWALList(c.App.Writer, out)
}

func describeListing(l *walarchive.Listing) walClusterJSON {
	cj := walClusterJSON{SystemID: l.Cluster.SystemID, SegSize: l.Cluster.SegSize, MissingHistory: l.MissingHistory(), Foreign: l.Foreign}
	if !l.Cluster.Created.IsZero() {
		t := l.Cluster.Created
		cj.Created = &t
	}
	for _, t := range l.Timelines {
		tj := walTimelineJSON{Timeline: t.Timeline, Segments: t.Count(), Partial: t.Partial, Backup: t.Backup, History: t.History}
		if n := len(t.Segments); n > 0 {
			tj.First = l.SegmentName(t.Timeline, t.Segments[0].First)
			tj.Last = l.SegmentName(t.Timeline, t.Segments[n-1].Last)
		}
		for _, g := range t.Gaps() {
			tj.Gaps = append(tj.Gaps, walRangeJSON{First: l.SegmentName(t.Timeline, g.First), Last: l.SegmentName(t.Timeline, g.Last), Count: g.Count()})
		}
		describeFork(l, t, &tj)
		cj.Gaps += len(tj.Gaps)
		cj.Segments += tj.Segments
		cj.Timelines = append(cj.Timelines, tj)
	}
	if tli, seg, ok := l.Head(); ok {
		cj.Head = l.SegmentName(tli, seg)
	}
	return cj
}

func printWALList(w io.Writer, out walListJSON) error {
	if len(out.Clusters) == 0 {
		_, err := fmt.Fprintln(w, "no WAL archived")
		return err
	}
	var b strings.Builder
	for _, cl := range out.Clusters {
		fmt.Fprintf(&b, "cluster %d: %d segments of %s, %d gaps, head %s\n", cl.SystemID, cl.Segments, walSizeString(int64(cl.SegSize)), cl.Gaps, orDash(cl.Head))
		for _, t := range cl.Timelines {
			hist := "history archived"
			if t.Timeline == 1 {
				hist = "no history file needed"
			} else if !t.History {
				hist = "HISTORY FILE MISSING"
			}
			fmt.Fprintf(&b, "  timeline %d: %s .. %s, %d segments, %s%s\n", t.Timeline, orDash(t.First), orDash(t.Last), t.Segments, hist, forkText(t))
			for _, g := range t.Gaps {
				fmt.Fprintf(&b, "    gap: %s .. %s (%d missing)\n", g.First, g.Last, g.Count)
			}
			for _, p := range t.Partial {
				fmt.Fprintf(&b, "    partial: %s\n", p)
			}
			streamedText(&b, t)
			for _, p := range t.Backup {
				fmt.Fprintf(&b, "    backup: %s\n", p)
			}
		}
		for _, k := range cl.Foreign {
			fmt.Fprintf(&b, "  foreign object (not used): %s\n", k)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func walSizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
