package wal

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// The spool is a cache beside the data directory that wal-fetch and its
// background prefetcher share across restore_command calls (each a new
// process):
//
//	identity.json      whose spool this is: repository, store, cluster, data
//	                   directory and restore (see restoreID)
//	state              the last segment recovery asked for (a symbolic link
//	                   to its name; the link's mtime is when)
//	lock               held (flock) by the running prefetcher
//	list/<dir>.json    a listing of one archive directory and when it was made
//	seg/<name>         a prefetched file, verified, decrypted
//	seg/<name>.meta    the record of the object it came from (with its MAC),
//	                   the object's key, size and time, the restore, and the
//	                   CRC-32C of the file
//	ready-<token>/<name>
//	                   a second link to seg/<name>, for the restore_command
//	                   that tidemark restore writes: it moves the file into
//	                   place with mv before it would start tidemark (see
//	                   ReadyDir)
//	prefetch.log       the prefetcher's log
//
// Nothing in it is trusted: a spool whose identity differs from the current
// restore is emptied before use, and a spooled file is served only if its
// meta names the object the current listing shows under that name and its
// bytes pass the object's MAC on the way into pg_wal. The ready directory
// is the exception, for speed: it is named after a token that only the
// restore_command of one restore knows, and only the prefetcher serving
// that restore_command links files into it, each once, as it verifies them.
type spool struct {
	dir   string
	id    spoolIdentity
	token string // names the ready directory; "" for none
	log   *slog.Logger

	// lists memoizes listing: the prefetcher looks up its whole window in
	// the cached listings every 50 ms, and decoding the JSON each time
	// was 1.2 GB of allocations (and their CPU) over a 160 s recovery.
	mu    sync.Mutex
	lists map[string]memoListing
}

// memoListing is a decoded listing file, with what identified the file.
type memoListing struct {
	mod  time.Time
	size int64
	ino  uint64
	l    *dirListing
}

type spoolIdentity struct {
	Format  int    `json:"format"`
	RepoID  string `json:"repo_id"`
	Store   string `json:"store"`
	Cluster uint64 `json:"cluster,string"`
	PGData  string `json:"pgdata"`
	Restore string `json:"restore"`
}

// spoolFormat 2: Sum became a CRC-32C (it was a BLAKE3). 3: the state is a
// symbolic link (it was state.json).
const spoolFormat = 3

// restoreID identifies one restore of a data directory: the file that holds
// its pg_control. A restore writes a new pg_control (pg_basebackup, tidemark
// restore), while PostgreSQL rewrites it in place during recovery, so the
// file's device, inode and birth time stay the same for the whole recovery,
// across server restarts, and differ for the next restore into the same path.
func restoreID(pgdata string) (string, error) {
	path := filepath.Join(pgdata, "global", "pg_control")
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_INO|unix.STATX_BTIME, &st)
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	if st.Mask&unix.STATX_BTIME != 0 {
		return fmt.Sprintf("%d:%d:%d.%09d", dev, st.Ino, st.Btime.Sec, st.Btime.Nsec), nil
	}
	// No birth time on this file system: the inode alone. Not the change
	// time, which PostgreSQL's in-place writes move. A reused inode number
	// is still caught per file: a spooled file must match the object the
	// current listing shows, and its MAC.
	return fmt.Sprintf("%d:%d", dev, st.Ino), nil
}

// openSpool opens (creating) the spool in dir for id, emptying it if it
// belonged to anything else.
func openSpool(dir string, id spoolIdentity, token string, log *slog.Logger) (*spool, error) {
	s := &spool{dir: dir, id: id, token: token, log: log}
	for _, d := range []string{dir, s.path("seg"), s.path("list")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	var have spoolIdentity
	b, err := os.ReadFile(s.path("identity.json"))
	if err == nil {
		err = json.Unmarshal(b, &have)
	}
	if err == nil && have == id {
		return s, s.mkReady()
	}
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		log.Info("emptying a restore spool that belongs to another restore or repository", "spool", dir)
	}
	s.wipe()
	if err := writeJSON(s.path("identity.json"), id); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return s, s.mkReady()
}

// mkReady creates the ready directory, if the spool has a token.
func (s *spool) mkReady() error {
	if s.token == "" {
		return nil
	}
	if err := os.MkdirAll(ReadyDir(s.dir, s.token), 0o700); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// ReadyDir is the spool's ready directory for token: restore_command's
// fast path (mv -f ReadyDir/%f %p) finds there the segments the prefetcher
// verified, and moves one into pg_wal in the time of a mv (about 2 ms)
// instead of a tidemark process's (12 ms and more under load).
func ReadyDir(spoolDir, token string) string {
	return filepath.Join(spoolDir, readyPrefix+token)
}

const readyPrefix = "ready-"

// ValidToken reports whether token can name a ready directory: 8 to 64
// letters and digits, nothing a shell or a path would read specially.
func ValidToken(token string) bool {
	if len(token) < 8 || len(token) > 64 {
		return false
	}
	for _, r := range token {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// ready returns the path of name in the ready directory, "" without one.
func (s *spool) ready(name string) string {
	if s.token == "" {
		return ""
	}
	return filepath.Join(ReadyDir(s.dir, s.token), name)
}

// link makes a spooled file available to restore_command's fast path.
func (s *spool) link(name string) bool {
	p := s.ready(name)
	if p == "" {
		return false
	}
	err := os.Link(s.path("seg", name), p)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		s.log.Warn("spool: cannot link a segment for restore_command", "file", name, "err", err)
		return false
	}
	return true
}

// unlinkReady takes name out of the ready directory: before the file is
// served another way, or once it is no longer wanted, so that the fast
// path serves each download at most once (a served file shares its inode
// with the copy in pg_wal, which the server may recycle and overwrite).
func (s *spool) unlinkReady(name string) {
	if p := s.ready(name); p != "" {
		os.Remove(p)
	}
}

// taken returns how many of the linked files left the ready directory
// (restore_command's fast path took them) and the newest of them ("" for
// none), and forgets them.
func (s *spool) taken(linked map[string]bool) (newest string, n int) {
	for name := range linked {
		if !s.inReady(name) {
			delete(linked, name)
			newest = max(newest, name)
			n++
		}
	}
	return newest, n
}

// inReady reports whether name is still in the ready directory.
func (s *spool) inReady(name string) bool {
	p := s.ready(name)
	if p == "" {
		return false
	}
	_, err := os.Lstat(p)
	return err == nil
}

// current reports whether the spool still belongs to this restore (a newer
// restore may have taken it over since it was opened).
func (s *spool) current() bool {
	var have spoolIdentity
	b, err := os.ReadFile(s.path("identity.json"))
	return err == nil && json.Unmarshal(b, &have) == nil && have == s.id
}

func (s *spool) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// wipe removes every cached file, listing, ready directory and state;
// identity and lock stay.
func (s *spool) wipe() {
	for _, d := range []string{"seg", "list"} {
		ents, _ := os.ReadDir(s.path(d))
		for _, e := range ents {
			os.Remove(s.path(d, e.Name()))
		}
	}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), readyPrefix) {
			os.RemoveAll(s.path(e.Name()))
		}
	}
	os.Remove(s.path("state"))
}

// writeJSON writes v to path through a temporary file and a rename, so a
// reader sees the old or the new file, never a torn one.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp-" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// dirListing is a cached listing of one archive directory.
type dirListing struct {
	Listed  time.Time          `json:"listed"`
	Entries map[string]objInfo `json:"entries"`
}

type objInfo struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
}

func (s *spool) listing(dir string) *dirListing {
	p := s.path("list", dir+".json")
	fi, err := os.Stat(p)
	if err != nil {
		return nil
	}
	// writeJSON renames a new file over the old one: another inode.
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	s.mu.Lock()
	m, ok := s.lists[dir]
	s.mu.Unlock()
	if ok && m.ino == ino && m.size == fi.Size() && m.mod.Equal(fi.ModTime()) {
		return m.l
	}
	var l dirListing
	if err := readJSON(p, &l); err != nil || l.Entries == nil {
		return nil
	}
	s.mu.Lock()
	if s.lists == nil {
		s.lists = map[string]memoListing{}
	}
	s.lists[dir] = memoListing{mod: fi.ModTime(), size: fi.Size(), ino: ino, l: &l}
	s.mu.Unlock()
	return &l
}

func (s *spool) saveListing(dir string, l *dirListing) {
	if err := writeJSON(s.path("list", dir+".json"), l); err != nil {
		s.log.Warn("spool: cannot cache a listing", "dir", dir, "err", err)
	}
}

// fetchState is what the last restore_command call asked for.
type fetchState struct {
	Name string
	Time time.Time
}

func (s *spool) setState(name string) {
	// A symbolic link renamed over the old one, not a file: on ext4,
	// renaming a file over another makes the kernel allocate the new file's
	// blocks at once (auto_da_alloc), which waits for the journal, and that
	// waits for the prefetcher's segments to reach the disk. A short link's
	// target lives in its inode: no blocks, no wait (50-160 ms of some
	// restore_command calls before).
	tmp := s.path("state.tmp-" + strconv.Itoa(os.Getpid()))
	os.Remove(tmp)
	err := os.Symlink(name, tmp)
	if err == nil {
		if err = os.Rename(tmp, s.path("state")); err != nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		s.log.Warn("spool: cannot record the request", "err", err)
	}
}

func (s *spool) state() (fetchState, bool) {
	path := s.path("state")
	name, err := os.Readlink(path)
	if err != nil {
		return fetchState{}, false
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fetchState{}, false
	}
	return fetchState{Name: name, Time: fi.ModTime()}, true
}

// spoolMeta describes a spooled file.
type spoolMeta struct {
	Key     string          `json:"key"`
	Object  objInfo         `json:"object"`
	Restore string          `json:"restore"`
	Record  walarchive.Meta `json:"record"`
	// Sum is the CRC-32C (hex) of the spooled plaintext, taken as the
	// prefetcher verified the object's MAC: it lets ServeSpooled check the
	// file without the repository's key. The spool is the server user's,
	// as pg_wal is, so the sum guards against a damaged or truncated file,
	// not a forged one, and a CRC does that at 25 GB/s where a
	// cryptographic hash took 4 ms of every restore_command call.
	Sum string `json:"sum,omitempty"`
}

// entry returns a spooled file's meta, if it is there, for this restore and
// the object obj under key.
func (s *spool) entry(name, key string, obj objInfo) (spoolMeta, bool) {
	var m spoolMeta
	if err := readJSON(s.path("seg", name+".meta"), &m); err != nil {
		return m, false
	}
	ok := m.Key == key && m.Restore == s.id.Restore && m.Object.Size == obj.Size &&
		m.Object.ModTime.Equal(obj.ModTime) && m.Record.Name == name && m.Record.SystemID == s.id.Cluster
	return m, ok
}

// has reports whether a file is spooled (without checking it).
func (s *spool) has(name string) bool {
	_, err1 := os.Stat(s.path("seg", name))
	_, err2 := os.Stat(s.path("seg", name+".meta"))
	return err1 == nil && err2 == nil
}

func (s *spool) remove(name string) {
	s.unlinkReady(name)
	os.Remove(s.path("seg", name))
	os.Remove(s.path("seg", name+".meta"))
}

// spoolSum is the hash behind spoolMeta.Sum.
func spoolSum() hash.Hash32 { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) }

// files returns the names of the spooled files: WAL file names only, never
// a meta file or the temporary file of a download in flight, which the
// prefetcher would otherwise delete as not wanted.
func (s *spool) files() []string {
	ents, _ := os.ReadDir(s.path("seg"))
	var out []string
	for _, e := range ents {
		n := e.Name()
		if f, err := pg.ParseWALFileName(n); err != nil || f.Name() != n {
			continue
		}
		out = append(out, n)
	}
	return out
}

// put spools a file: write streams it into a temporary file; on success the
// meta goes into place first and the file last, so a file without its meta
// (never served) is the only torn state.
func (s *spool) put(name string, write func(w io.Writer) (spoolMeta, error)) error {
	tmp := s.path("seg", "."+name+".tmp-"+strconv.Itoa(os.Getpid()))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	m, err := write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = writeJSON(s.path("seg", name+".meta"), m)
	}
	if err == nil {
		err = os.Rename(tmp, s.path("seg", name))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// tryLock takes the prefetcher's lock if no prefetcher holds it.
func (s *spool) tryLock() (unlock func(), ok bool) {
	f, err := os.OpenFile(s.path("lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	return func() { f.Close() }, true
}

// lockPID records the prefetcher's process id in the lock file it holds,
// for operators (and tests) who want to stop it.
func (s *spool) lockPID() {
	os.WriteFile(s.path("lock"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
}

// StartPrefetcher starts the prefetcher (exe with args, normally tidemark
// wal-prefetch and the flags of the wal-fetch call that starts it) in the
// background for the data directory pgdata, logging to prefetch.log in the
// spool. It runs in a session of its own, so PostgreSQL's wait for
// restore_command ends with the calling process; StopPrefetcher ends it.
func StartPrefetcher(exe string, args []string, pgdata, spoolDir string) error {
	logPath := filepath.Join(spoolDir, "prefetch.log")
	if fi, err := os.Stat(logPath); err == nil && fi.Size() > 1<<20 {
		os.Rename(logPath, logPath+".1")
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	closeInheritedOnExec()
	cmd := exec.Command(exe, args...)
	cmd.Dir = pgdata
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// closeInheritedOnExec marks every descriptor above stderr close-on-exec:
// PostgreSQL's startup process may have left some open across system(),
// and a long-lived prefetcher must not hold them.
func closeInheritedOnExec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// StopPrefetcher ends the background prefetcher of the spool at dir, if one
// runs (its pid is in the spool's lock file), and waits up to wait for its
// lock to be free, so that it no longer writes into dir. It reports whether
// no prefetcher holds the spool any more.
func StopPrefetcher(dir string, wait time.Duration) bool {
	lock := filepath.Join(dir, "lock")
	b, err := os.ReadFile(lock)
	if err != nil {
		return true
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(lock, os.O_RDWR, 0)
		if err != nil {
			return true
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		f.Close()
		if err == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
