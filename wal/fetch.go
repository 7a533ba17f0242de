package wal

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// FetchOptions configure a Fetcher. Zero values take the defaults.
type FetchOptions struct {
	PGData  string                 // the data directory being recovered
	Cluster walarchive.ClusterInfo // its system identifier and segment size (ReadCluster)
	RepoID  string                 // the repository's id, which the spool is tied to
	// SpoolDir is the spool (default DefaultSpoolDir(PGData)). NoSpool
	// fetches every file directly and prefetches nothing.
	SpoolDir string
	NoSpool  bool
	// SpoolToken names the spool's ready directory (ReadyDir), where the
	// prefetcher links each segment it verified for restore_command's fast
	// path. "" links nothing.
	SpoolToken string
	// Prefetch is how many segments after the one asked for are kept ready
	// in the spool (default 16), bounded by SpoolMax bytes (default 256 MiB).
	Prefetch int
	SpoolMax int64
	// Parallel is how many objects the prefetcher downloads at once
	// (default 4).
	Parallel int
	// Partial serves X.partial when segment X is asked for and only the
	// partial file is archived: for recovering the last, incomplete segment
	// of a timeline on purpose. Never by default.
	Partial bool
	// TargetTimeline is the timeline recovery targets, for deciding whether
	// wal-receive's tail of an old timeline may be served (see tail.go);
	// 0 reads recovery_target_timeline from the data directory.
	TargetTimeline pg.TimelineID
	// ListMaxAge is how old a cached listing may be to answer "not in the
	// archive" without listing again (default 2s). A positive answer from
	// any listing is checked by the GET that follows.
	ListMaxAge time.Duration
	// Idle is how long the prefetcher waits for the next request before it
	// empties the spool and exits (default 60s).
	Idle time.Duration
	// Poll is how often the prefetcher looks for a new request (default
	// 50ms).
	Poll   time.Duration
	Logger *slog.Logger
}

func (o *FetchOptions) fill() {
	if o.SpoolDir == "" && o.PGData != "" {
		o.SpoolDir = DefaultSpoolDir(o.PGData)
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 16
	}
	if o.SpoolMax <= 0 {
		o.SpoolMax = 256 << 20
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.ListMaxAge <= 0 {
		o.ListMaxAge = 2 * time.Second
	}
	if o.Idle <= 0 {
		o.Idle = time.Minute
	}
	if o.Poll <= 0 {
		o.Poll = 50 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Fetcher brings archived WAL back for recovery (restore_command).
type Fetcher struct {
	arch    *walarchive.Archive
	opts    FetchOptions
	log     *slog.Logger
	cluster uint64
	sp      *spool // nil without a spool
}

// NewFetcher returns a Fetcher. A spool that cannot be used (a directory
// that cannot be created, say) is logged and done without: it only makes
// recovery faster.
func NewFetcher(arch *walarchive.Archive, opts FetchOptions) (*Fetcher, error) {
	opts.fill()
	if err := pg.ValidateWALSegSize(uint64(opts.Cluster.SegSize)); err != nil {
		return nil, err
	}
	if opts.SpoolToken != "" && !ValidToken(opts.SpoolToken) {
		return nil, fmt.Errorf("spool token %q: want 8 to 64 letters and digits", opts.SpoolToken)
	}
	f := &Fetcher{arch: arch, opts: opts, log: opts.Logger, cluster: opts.Cluster.SystemID}
	if opts.NoSpool || opts.SpoolDir == "" {
		return f, nil
	}
	rid, err := restoreID(opts.PGData)
	if err == nil {
		id := spoolIdentity{Format: spoolFormat, RepoID: opts.RepoID, Store: arch.Store().String(),
			Cluster: opts.Cluster.SystemID, PGData: opts.PGData, Restore: rid}
		f.sp, err = openSpool(opts.SpoolDir, id, opts.SpoolToken, f.log)
	}
	if err != nil {
		f.log.Warn("fetching without a spool", "spool", opts.SpoolDir, "err", err)
		f.sp = nil
	}
	return f, nil
}

// FetchResult says where a fetched file came from.
type FetchResult struct {
	Name   string // the archived file delivered (X.partial with Partial)
	Source string // "spool", "archive" or "pieces"
	Size   int64
	// Tail is, for a segment assembled from wal-receive's pieces, how many
	// of its bytes the pieces held (the rest are zeros); 0 otherwise.
	Tail int64
}

// Fetch delivers the archived file called name to dest: verified, written to
// a temporary file beside dest and renamed to dest, so dest never holds a
// partial or unverified file. A file the archive does not have is a
// *walarchive.NotArchivedError (restore_command's exit 1); that answer comes
// from a listing no older than ListMaxAge, never from a failed GET alone.
// .partial files are served only with FetchOptions.Partial.
func (f *Fetcher) Fetch(ctx context.Context, name, dest string) (FetchResult, error) {
	res := FetchResult{Name: name}
	file, err := pg.ParseWALFileName(name)
	if err != nil || file.Name() != name {
		return res, &walarchive.InvalidFileError{Name: name, Err: fmt.Errorf("not a WAL archive file name")}
	}
	if file.Kind == pg.WALSegment {
		if _, err := file.SegNo(f.opts.Cluster.SegSize); err != nil {
			return res, &walarchive.InvalidFileError{Name: name, Err: err}
		}
	}
	key, _ := walarchive.Key(f.cluster, name)
	if file.Kind == pg.WALPartialSegment && !f.opts.Partial {
		return res, &walarchive.NotArchivedError{Key: key, Name: name + " (partial files are served only with --partial)"}
	}
	dir := dirOf(file)
	if f.sp == nil && file.Kind == pg.WALSegment {
		// Without a spool there is no listing to answer from, and every
		// call listed the directory before its GET, a request more per
		// segment (without it, 4-7 ms less of 88-98 at p50 against
		// MinIO). Recovery asks for segments that are there far more
		// often than for missing ones, so a segment is fetched by its
		// name first; only a miss lists (for its .partial, wal-receive's
		// pieces, or to say it is not there).
		res.Source, res.Size, err = f.deliver(ctx, name, objInfo{}, dest)
		var na *walarchive.NotArchivedError
		if err == nil || !errors.As(err, &na) {
			return res, err
		}
	}

	l, err := f.listing(ctx, dir, false)
	if err != nil {
		return res, err
	}
	serve, obj, ok := f.lookup(l, name)
	if !ok && time.Since(l.Listed) >= f.opts.ListMaxAge {
		if l, err = f.listing(ctx, dir, true); err != nil {
			return res, err
		}
		serve, obj, ok = f.lookup(l, name)
	}
	if !ok && file.Kind == pg.WALSegment {
		res, err := f.tailOrMissing(ctx, name, key, l, dest)
		if err != nil && !errors.Is(err, walarchive.ErrNotArchived) {
			// The pieces went while they were read: the segment was
			// archived whole meanwhile. Once more, from a new listing.
			if l, lerr := f.listing(ctx, dir, true); lerr == nil {
				if _, _, found := f.lookup(l, name); !found {
					res, err = f.tailOrMissing(ctx, name, key, l, dest)
				} else {
					return f.Fetch(ctx, name, dest)
				}
			}
		}
		if err == nil && f.sp != nil {
			f.sp.setState(name)
		}
		return res, err
	}
	if !ok {
		return res, &walarchive.NotArchivedError{Key: key, Name: name}
	}
	res.Name = serve
	for attempt := 0; ; attempt++ {
		res.Source, res.Size, err = f.deliver(ctx, serve, obj, dest)
		var na *walarchive.NotArchivedError
		if err == nil || !errors.As(err, &na) || attempt > 0 {
			break
		}
		// Listed but gone (removed since the listing): ask again.
		if l, err = f.listing(ctx, dir, true); err != nil {
			return res, err
		}
		if serve, obj, ok = f.lookup(l, name); !ok {
			return res, &walarchive.NotArchivedError{Key: key, Name: name}
		}
		res.Name = serve
	}
	if err != nil {
		return res, err
	}
	if f.sp != nil && file.Kind == pg.WALSegment {
		f.sp.setState(name)
	}
	return res, nil
}

func dirOf(file pg.WALFile) string {
	if file.Kind == pg.WALTimelineHistory {
		return walarchive.HistoryDir
	}
	return file.LogDir()
}

// lookup finds name in a listing: the file itself, or its .partial when
// allowed.
func (f *Fetcher) lookup(l *dirListing, name string) (string, objInfo, bool) {
	if o, ok := l.Entries[name]; ok {
		return name, o, true
	}
	if f.opts.Partial {
		if o, ok := l.Entries[name+".partial"]; ok {
			return name + ".partial", o, true
		}
	}
	return "", objInfo{}, false
}

// listing returns the listing of an archive directory: the spool's copy
// unless fresh is set or there is none, else a new one (cached).
func (f *Fetcher) listing(ctx context.Context, dir string, fresh bool) (*dirListing, error) {
	if f.sp != nil && !fresh {
		if l := f.sp.listing(dir); l != nil && !l.Listed.After(time.Now()) {
			return l, nil
		}
	}
	listed := time.Now()
	ents, err := f.arch.ListDir(ctx, f.cluster, dir)
	if err != nil {
		return nil, err
	}
	l := &dirListing{Listed: listed, Entries: make(map[string]objInfo, len(ents))}
	for _, e := range ents {
		l.Entries[e.Name] = objInfo{Size: e.Size, ModTime: e.ModTime}
	}
	if f.sp != nil {
		f.sp.saveListing(dir, l)
	}
	return l, nil
}

// deliver writes the archived file called name (object obj) to dest, from
// the spool if it holds a good copy, else from the archive.
func (f *Fetcher) deliver(ctx context.Context, name string, obj objInfo, dest string) (string, int64, error) {
	key, _ := walarchive.Key(f.cluster, name)
	if f.sp != nil {
		if m, ok := f.sp.entry(name, key, obj); ok {
			n, err := f.fromSpool(name, m, dest)
			if err == nil {
				return "spool", n, nil
			}
			f.log.Warn("not serving a spooled file", "file", name, "err", err)
			f.sp.remove(name)
		}
	}
	var n int64
	err := writeAtomic(dest, func(w io.Writer) error {
		m, err := f.arch.Get(ctx, f.cluster, name, w)
		n = m.Size
		return err
	})
	return "archive", n, err
}

// fromSpool puts a spooled file at dest once its MAC checks out: a second
// link within one file system (the spool sits beside the data directory),
// so a warm spool serves a 16 MiB segment by reading it once from the page
// cache. Across file systems it copies.
func (f *Fetcher) fromSpool(name string, m spoolMeta, dest string) (int64, error) {
	f.sp.unlinkReady(name)
	path := f.sp.path("seg", name)
	src, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	v := f.arch.NewVerifier(m.Record)
	if _, err := io.Copy(v, src); err != nil {
		return 0, err
	}
	if !v.OK() {
		return 0, fmt.Errorf("spooled %s does not match the MAC of %s", name, m.Key)
	}
	if err := linkInto(path, src, dest); err != nil {
		return 0, fmt.Errorf("put %s into place: %w", name, err)
	}
	return m.Record.Size, nil
}

// writeAtomic writes dest through a temporary file and a rename, so that
// PostgreSQL never reads a half-written file. It does not fsync: recovery
// needs the file only until it has replayed it, and after a crash it asks
// restore_command for it again; an fsync per 16 MiB segment cost recovery
// tens of milliseconds a call.
func writeAtomic(dest string, write func(w io.Writer) error) error {
	dir, base := filepath.Split(dest)
	tmp := filepath.Join(dir, "."+base+".tidemark-"+strconv.Itoa(os.Getpid())+".tmp")
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", dest, err)
	}
	err = write(out)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write %s: %w", tmp, cerr)
	}
	if err == nil {
		if err = os.Rename(tmp, dest); err != nil {
			err = fmt.Errorf("rename %s: %w", tmp, err)
		}
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// PrefetcherNeeded reports whether a prefetcher should be started: the
// spool is in use and none holds its lock.
func (f *Fetcher) PrefetcherNeeded() bool {
	if f.sp == nil {
		return false
	}
	unlock, ok := f.sp.tryLock()
	if ok {
		unlock()
	}
	return ok
}

// IsSegment reports whether name is a WAL segment's file name (not a
// history or partial file).
func IsSegment(name string) bool {
	f, err := pg.ParseWALFileName(name)
	return err == nil && f.Kind == pg.WALSegment && f.Name() == name
}

// SpoolDir returns the spool in use, "" for none.
func (f *Fetcher) SpoolDir() string {
	if f.sp == nil {
		return ""
	}
	return f.sp.dir
}

// Prefetch keeps the segments after the one recovery last asked for ready
// in the spool until no request came for Idle, the server is gone, another
// restore took over the spool, or ctx ends; then it empties the spool of
// files and returns. Only one prefetcher runs per spool; a second returns at
// once.
func (f *Fetcher) Prefetch(ctx context.Context) error {
	if f.sp == nil {
		return errors.New("prefetch needs a spool")
	}
	unlock, ok := f.sp.tryLock()
	if !ok {
		return nil
	}
	defer unlock()
	f.sp.lockPID()
	defer func() {
		for _, n := range f.sp.files() {
			f.sp.remove(n)
		}
	}()
	f.log.Info("prefetcher started", "spool", f.sp.dir, "segments", f.opts.Prefetch, "max_bytes", f.opts.SpoolMax)
	lastList := map[string]time.Time{}
	// Downloads run as a pipeline, nearest segment first: a new one starts
	// as soon as one ends, not when a whole batch has, so that one slow GET
	// does not hold the others back while replay catches up.
	inflight := map[string]bool{}
	// spooled holds what this prefetcher downloaded: a wal-fetch that
	// takes a segment records the request only after moving the file
	// out, and in between the segment looks wanted and missing; fetching
	// it again cost a tenth of the downloads of the benchmark's PITR.
	spooled := map[string]bool{}
	// failed holds when a download last failed: it is tried again after
	// prefetchRetry, not at once, so that an object that cannot be read
	// (damaged, its key gone) is not fetched in a loop until recovery gets
	// to it and wal-fetch reports it.
	failed := map[string]time.Time{}
	// linked holds what this prefetcher linked into the ready directory
	// and has not seen taken yet. restore_command's fast path moves a
	// file out of there without running tidemark, so no call records
	// the request: a file gone from there is the request.
	linked := map[string]bool{}
	lastAsked := ""
	var nDownloads, nTaken int
	defer func() {
		f.log.Info("prefetcher: done", "downloads", nDownloads, "taken_by_mv", nTaken)
	}()
	type result struct {
		name string
		ok   bool
	}
	done := make(chan result, f.opts.Parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if !f.sp.current() {
			f.log.Info("prefetcher: the spool belongs to another restore now; exiting")
			return nil
		}
		st, ok := f.sp.state()
		taken, n := f.sp.taken(linked)
		nTaken += n
		if taken != "" && (!ok || taken >= st.Name) {
			f.sp.setState(taken)
			st, ok = fetchState{Name: taken, Time: time.Now()}, true
		}
		if !ok || time.Since(st.Time) > f.opts.Idle {
			f.log.Info("prefetcher: no request for a while; exiting", "idle", f.opts.Idle)
			return nil
		}
		if !postmasterAlive(f.opts.PGData) {
			f.log.Info("prefetcher: the server is not running; exiting")
			return nil
		}
		if st.Name < lastAsked {
			// Recovery went back (a restart replays from its last
			// restartpoint): it needs those segments again.
			clear(spooled)
		}
		lastAsked = st.Name
		for n := range spooled {
			if n < st.Name {
				delete(spooled, n)
			}
		}
		for n := range failed {
			if n < st.Name {
				delete(failed, n)
			}
		}
		want := f.window(ctx, st.Name, lastList)
		f.freshHistory(ctx, lastList)
		keep := map[string]bool{}
		for _, w := range want {
			keep[w.name] = true
		}
		for _, n := range f.sp.files() {
			if !keep[n] && !recentlyAsked(n, st.Name, f.opts.Cluster.SegSize) {
				delete(linked, n)
				f.sp.remove(n)
			}
		}
		for _, w := range want {
			if len(inflight) >= f.opts.Parallel {
				break
			}
			if inflight[w.name] || spooled[w.name] || time.Since(failed[w.name]) < prefetchRetry || f.sp.has(w.name) {
				continue
			}
			inflight[w.name] = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				err := f.spoolOne(ctx, w)
				if err != nil && ctx.Err() == nil {
					f.log.Warn("prefetch failed; restore_command will fetch it itself", "file", w.name, "err", err)
				} else if err == nil {
					f.log.Debug("prefetched", "file", w.name, "seconds", time.Since(start).Seconds(), "asked_for", st.Name)
				}
				done <- result{w.name, err == nil}
			}()
		}
		// Wake when a download ends (to start the next) or after Poll
		// (to follow recovery's progress).
		select {
		case <-ctx.Done():
		case r := <-done:
			delete(inflight, r.name)
			if r.ok {
				nDownloads++
				spooled[r.name] = true
				delete(failed, r.name)
				if f.sp.link(r.name) {
					linked[r.name] = true
				}
			} else {
				failed[r.name] = time.Now()
			}
		case <-time.After(f.opts.Poll):
		}
	}
}

// recentlyAsked reports whether segment name is last, the one recovery
// asked for last, or one of the keepBehind before it on its timeline. The
// spool keeps those: when recovery ends it reads its last record again,
// whose segment its read-ahead may have left a few behind (the reader
// decodes up to 512 kB ahead, across segments that a WAL switch cut
// short), and a miss then costs a download while recovery waits.
func recentlyAsked(name, last string, segSize uint32) bool {
	f, err1 := pg.ParseWALFileName(name)
	l, err2 := pg.ParseWALFileName(last)
	if err1 != nil || err2 != nil || f.Kind != pg.WALSegment || l.Kind != pg.WALSegment || f.Timeline != l.Timeline {
		return false
	}
	fs, err1 := f.SegNo(segSize)
	ls, err2 := l.SegNo(segSize)
	return err1 == nil && err2 == nil && fs <= ls && ls-fs <= keepBehind
}

const keepBehind = 3

// prefetchRetry is how long the prefetcher leaves a segment whose download
// failed before it tries again.
const prefetchRetry = time.Second

type wanted struct {
	name string
	obj  objInfo
}

// window returns the segments to hold after last: the next ones on its
// timeline that the archive has, in order, up to the first it lacks, within
// Prefetch segments and SpoolMax bytes.
func (f *Fetcher) window(ctx context.Context, last string, lastList map[string]time.Time) []wanted {
	file, err := pg.ParseWALFileName(last)
	if err != nil || file.Kind != pg.WALSegment {
		return nil
	}
	segSize := f.opts.Cluster.SegSize
	seg, err := file.SegNo(segSize)
	if err != nil {
		return nil
	}
	var out []wanted
	var bytes int64
	for i := 1; i <= f.opts.Prefetch; i++ {
		name := pg.SegmentName(file.Timeline, seg+pg.SegNo(i), segSize)
		dir := name[:16]
		l := f.sp.listing(dir)
		known := false
		if l != nil {
			_, known = l.Entries[name]
		}
		if !known && (l == nil || time.Since(lastList[dir]) >= f.opts.ListMaxAge/2) {
			// Not known yet: list again, at most every ListMaxAge/2, so a
			// recovery that keeps up with a live archive finds new
			// segments, and a wal-fetch asking for the one after the
			// archive's end finds a listing young enough to answer "not
			// archived" without opening the repository (SpoolSaysMissing).
			lastList[dir] = time.Now()
			if l, err = f.listing(ctx, dir, true); err != nil {
				f.log.Warn("prefetch: list", "dir", dir, "err", err)
				return out
			}
		}
		obj, ok := l.Entries[name]
		if !ok || bytes+obj.Size > f.opts.SpoolMax {
			return out
		}
		bytes += int64(segSize)
		out = append(out, wanted{name: name, obj: obj})
	}
	return out
}

// freshHistory keeps the spool's listing of timeline history files younger
// than ListMaxAge while recovery runs: recovery asks for history files that
// do not exist when it starts and when it ends (to pick a new timeline),
// and wal-fetch answers those from the listing without opening the
// repository. One LIST every ListMaxAge/2.
func (f *Fetcher) freshHistory(ctx context.Context, lastList map[string]time.Time) {
	if time.Since(lastList[walarchive.HistoryDir]) < f.opts.ListMaxAge/2 {
		return
	}
	lastList[walarchive.HistoryDir] = time.Now()
	if _, err := f.listing(ctx, walarchive.HistoryDir, true); err != nil {
		f.log.Warn("prefetch: list", "dir", walarchive.HistoryDir, "err", err)
	}
}

// spoolOne downloads one object into the spool, verified.
func (f *Fetcher) spoolOne(ctx context.Context, w wanted) error {
	key, _ := walarchive.Key(f.cluster, w.name)
	return f.sp.put(w.name, func(out io.Writer) (spoolMeta, error) {
		h := spoolSum()
		m, err := f.arch.Get(ctx, f.cluster, w.name, io.MultiWriter(out, h))
		return spoolMeta{Key: key, Object: w.obj, Restore: f.sp.id.Restore, Record: m, Sum: hex.EncodeToString(h.Sum(nil))}, err
	})
}

// postmasterAlive reports whether the server of pgdata runs: postmaster.pid
// names a live process.
func postmasterAlive(pgdata string) bool {
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
