// Package preflight is tidemark check: before the first night's backup,
// it looks at the server and the repository as tidemark will use them and
// reports each thing it checked as pass, warn or fail, with the fix in
// one line. It reads settings, opens the repository, creates and removes
// one lease (to prove it can write and to read the store's clock), and,
// unless told not to, switches the server to a new WAL segment and waits
// for it to arrive in the archive: the only proof that archive_command
// works end to end.
//
// It changes nothing else. It is not a monitor: run it after a change of
// configuration, not on a timer (the metrics do that).
package preflight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/wal"
)

// Status of one check.
type Status string

// The statuses, from good to bad. Skip: the check does not apply or could
// not run because an earlier one failed.
const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip"
)

// Check is one thing checked.
type Check struct {
	Group  string `json:"group"` // "server", "repository", "archiving"
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`        // what was found
	Fix    string `json:"fix,omitempty"` // what to do, for warn and fail
}

// Report is every check, in the order run.
type Report struct {
	Checks []Check `json:"checks"`
	// OK: nothing failed (warnings allowed).
	OK bool `json:"ok"`
}

// ErrFailed is returned by Run when a check failed.
var ErrFailed = errors.New("a preflight check failed")

// Options say what to check.
type Options struct {
	// ConnString reaches the server ("" is libpq's environment); PGData is
	// its data directory as this host sees it ("" is the server's
	// data_directory).
	ConnString string
	PGData     string
	// RepoURL is the configured repository, as given (for comparing with
	// archive_command's); Open opens it with the configured identity.
	RepoURL string
	Open    func(ctx context.Context) (*repo.Repo, error)
	// Socket is the agent's socket; "" is the default in PGDATA. The agent
	// is checked when the socket exists or AgentExpected is set.
	Socket        string
	AgentExpected bool
	// NoSwitch skips the round trip (pg_switch_wal and waiting for the
	// segment in the archive); SwitchWait bounds the wait (default 1 min).
	NoSwitch   bool
	SwitchWait time.Duration
	// SameRepo reports whether two repository URLs name one store
	// (location.Name of each); nil compares the strings.
	SameRepo func(a, b string) bool
	Logger   *slog.Logger
}

// run collects checks.
type run struct {
	opts Options
	log  *slog.Logger
	rep  Report
}

func (r *run) add(group, name string, st Status, detail, fix string) {
	r.rep.Checks = append(r.rep.Checks, Check{Group: group, Name: name, Status: st, Detail: detail, Fix: fix})
}

// Run checks the server and the repository. The report is complete even
// when checks fail; the error is ErrFailed then, or what stopped the run
// (the context ending).
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.SwitchWait <= 0 {
		opts.SwitchWait = time.Minute
	}
	if opts.SameRepo == nil {
		opts.SameRepo = func(a, b string) bool { return a == b }
	}
	r := &run{opts: opts, log: opts.Logger}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	srv := r.server(ctx)
	if srv != nil {
		defer srv.conn.Close(context.WithoutCancel(ctx))
	}
	rp := r.repository(ctx, srv)
	if rp != nil {
		defer rp.Close()
	}
	r.agent(ctx, srv)
	r.roundTrip(ctx, srv, rp)
	if srv != nil && rp != nil {
		r.clusterArchive(ctx, rp, srv.cluster)
	}
	if err := ctx.Err(); err != nil {
		return &r.rep, err
	}
	r.rep.OK = true
	for _, c := range r.rep.Checks {
		if c.Status == Fail {
			r.rep.OK = false
		}
	}
	if !r.rep.OK {
		return &r.rep, ErrFailed
	}
	return &r.rep, nil
}

// server is what the server checks found, for the later ones.
type server struct {
	conn       *pgx.Conn
	version    int // server_version_num
	pgdata     string
	cluster    uint64
	standby    bool
	archiveCmd string
}

func (r *run) server(ctx context.Context) *server {
	const g = "server"
	conn, err := pgx.Connect(ctx, r.opts.ConnString)
	if err != nil {
		r.add(g, "connection", Fail, oneLine(err), "set --pg-conn (or PGHOST, PGPORT, PGUSER) to reach the server as a superuser, e.g. --pg-conn 'host=/var/run/postgresql user=postgres'")
		return nil
	}
	s := &server{conn: conn}
	var settings = map[string]string{}
	rows, err := conn.Query(ctx, "SELECT name, setting FROM pg_settings WHERE name IN ('server_version_num', 'wal_level', 'archive_mode', "+
		"'archive_command', 'archive_library', 'max_wal_senders', 'data_checksums', 'wal_log_hints', 'summarize_wal', 'full_page_writes', 'data_directory', 'archive_timeout')")
	if err == nil {
		for rows.Next() {
			var n, v string
			if err = rows.Scan(&n, &v); err != nil {
				break
			}
			settings[n] = v
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err == nil {
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())").Scan(&s.standby, &s.cluster)
	}
	if err != nil {
		r.add(g, "connection", Fail, oneLine(err), "connect as a superuser (or a member of pg_read_all_settings and pg_monitor): --pg-conn 'user=postgres'")
		conn.Close(ctx)
		return nil
	}
	s.version, _ = strconv.Atoi(settings["server_version_num"])
	role := "primary"
	if s.standby {
		role = "standby"
	}
	if _, err := pg.MajorFromVersionNum(s.version); err != nil {
		// The range is pg's, the one place that decides it; backup
		// refuses such a server (exit 8) before writing anything.
		r.add(g, "connection", Fail, oneLine(err), "run a supported version ("+pg.SupportedVersions()+"), or a tidemark release that supports this one")
		conn.Close(ctx)
		return nil
	}
	r.add(g, "connection", Pass, fmt.Sprintf("PostgreSQL %d.%d, %s, system identifier %d", s.version/10000, s.version%100, role, s.cluster), "")

	switch settings["wal_level"] {
	case "replica", "logical":
		r.add(g, "wal_level", Pass, settings["wal_level"], "")
	default:
		r.add(g, "wal_level", Fail, settings["wal_level"], "set wal_level = replica in postgresql.conf and restart the server")
	}
	switch m := settings["archive_mode"]; {
	case m == "on" || (m == "always" && s.standby):
		r.add(g, "archive_mode", Pass, m, "")
	case m == "always":
		r.add(g, "archive_mode", Pass, m+" (archives on a standby too)", "")
	default:
		r.add(g, "archive_mode", Fail, m, "set archive_mode = on in postgresql.conf and restart the server")
	}
	s.archiveCmd = settings["archive_command"]
	r.archiveCommand(settings["archive_library"], s.archiveCmd)
	if n, _ := strconv.Atoi(settings["max_wal_senders"]); n >= 2 {
		r.add(g, "max_wal_senders", Pass, settings["max_wal_senders"], "")
	} else {
		r.add(g, "max_wal_senders", Warn, settings["max_wal_senders"], "set max_wal_senders = 10 (and restart): tidemark wal-receive and standbys stream over the replication protocol")
	}
	switch {
	case settings["data_checksums"] == "on":
		r.add(g, "data checksums", Pass, "on: backups verify every page they read", "")
	case settings["wal_log_hints"] == "on":
		r.add(g, "data checksums", Warn, "off (wal_log_hints on)", "enable data checksums (server stopped: pg_checksums --enable -D PGDATA) so that backups and drills can detect corrupt pages")
	default:
		r.add(g, "data checksums", Warn, "off, and wal_log_hints off", "enable data checksums (server stopped: pg_checksums --enable -D PGDATA), or at least wal_log_hints = on, so that hint-bit changes are WAL-logged and pages can be checked")
	}
	switch {
	case s.version < 170000:
		r.add(g, "summarize_wal", Skip, fmt.Sprintf("PostgreSQL %d has no WAL summaries; incrementals read the changed pages tidemark's block summaries (written as WAL is archived) name", s.version/10000), "")
	case settings["summarize_wal"] == "on":
		r.add(g, "summarize_wal", Pass, "on: incremental backups read only changed pages, from PostgreSQL's WAL summaries or tidemark's block summaries, whichever reads less", "")
	default:
		// tidemark's block summaries do the same on every version.
		r.add(g, "summarize_wal", Pass, settings["summarize_wal"]+": not needed, incrementals read the changed pages tidemark's block summaries (written as WAL is archived) name", "")
	}
	if settings["full_page_writes"] == "on" {
		r.add(g, "full_page_writes", Pass, "on", "")
	} else {
		r.add(g, "full_page_writes", Fail, settings["full_page_writes"], "set full_page_writes = on (and reload): without it a crash can leave torn pages that no WAL repairs")
	}
	s.pgdata = r.opts.PGData
	if s.pgdata == "" {
		s.pgdata = settings["data_directory"]
	}
	r.dataAccess(ctx, s)
	return s
}

// archiveCommand checks that archive_command runs tidemark wal-push, by
// absolute path, into the configured repository.
func (r *run) archiveCommand(library, cmd string) {
	const g, name = "server", "archive_command"
	if library != "" {
		r.add(g, name, Fail, fmt.Sprintf("archive_library = %q is set, which PostgreSQL uses instead of archive_command", library), "set archive_library = '' and archive_command = '/usr/bin/tidemark wal-push %p'")
		return
	}
	fields := strings.Fields(cmd)
	at := -1
	for i := 0; i+1 < len(fields); i++ {
		if filepath.Base(strings.Trim(fields[i], `'"`)) == "tidemark" && fields[i+1] == "wal-push" {
			at = i
			break
		}
	}
	if at < 0 {
		r.add(g, name, Fail, fmt.Sprintf("%q does not run tidemark wal-push", cmd), "set archive_command = '/usr/bin/tidemark wal-push %p' in postgresql.conf and reload")
		return
	}
	bin := strings.Trim(fields[at], `'"`)
	if !filepath.IsAbs(bin) {
		r.add(g, name, Warn, fmt.Sprintf("%q names tidemark without a path", cmd), "write the absolute path (archive_command = '/usr/bin/tidemark wal-push %p'): the server's PATH depends on how it was started")
		return
	}
	if fi, err := os.Stat(bin); err != nil || fi.Mode()&0o111 == 0 {
		r.add(g, name, Fail, fmt.Sprintf("%q: %s is not an executable file here", cmd, bin), "install tidemark there, or correct the path in archive_command")
		return
	}
	var url string
	for i := at + 2; i < len(fields); i++ {
		f := strings.Trim(fields[i], `'"`)
		if v, ok := strings.CutPrefix(f, "--repo="); ok {
			url = v
		} else if f == "--repo" && i+1 < len(fields) {
			url = strings.Trim(fields[i+1], `'"`)
		}
	}
	// PostgreSQL turns %% into %.
	url = strings.ReplaceAll(url, "%%", "%")
	switch {
	case url == "":
		r.add(g, name, Pass, fmt.Sprintf("%q (its repository comes from the server's environment or config file; the round trip below shows where it goes)", cmd), "")
	case r.opts.RepoURL != "" && !r.opts.SameRepo(url, r.opts.RepoURL):
		r.add(g, name, Fail, fmt.Sprintf("%q archives into %s, not the configured repository %s", cmd, url, r.opts.RepoURL), "make archive_command and tidemark's config name one repository")
	default:
		r.add(g, name, Pass, cmd, "")
	}
}

// dataAccess checks that this OS user reads PGDATA (its pg_control names
// the server's cluster) and every tablespace, as backup must.
func (r *run) dataAccess(ctx context.Context, s *server) {
	const g, name = "server", "data directory access"
	if s.pgdata == "" {
		r.add(g, name, Skip, "no data directory known", "pass --pgdata")
		return
	}
	cf, err := pg.ReadControlFileAt(s.pgdata)
	if err != nil {
		r.add(g, name, Fail, oneLine(err), fmt.Sprintf("run tidemark as the server's OS user (postgres) on the database host, with --pgdata %s", s.pgdata))
		return
	}
	if cf.SystemIdentifier != s.cluster {
		r.add(g, name, Fail, fmt.Sprintf("%s belongs to cluster %d, the server is cluster %d", s.pgdata, cf.SystemIdentifier, s.cluster), "set --pgdata to the server's data directory (SHOW data_directory)")
		return
	}
	var unreadable []string
	for _, d := range []string{"base", "global", "pg_wal"} {
		if _, err := os.ReadDir(filepath.Join(s.pgdata, d)); err != nil {
			unreadable = append(unreadable, oneLine(err))
		}
	}
	rows, err := s.conn.Query(ctx, "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace WHERE pg_tablespace_location(oid) <> ''")
	n := 0
	if err == nil {
		for rows.Next() {
			var sp, loc string
			if rows.Scan(&sp, &loc) == nil {
				n++
				if _, err := os.ReadDir(loc); err != nil {
					unreadable = append(unreadable, fmt.Sprintf("tablespace %s: %s", sp, oneLine(err)))
				}
			}
		}
		rows.Close()
	}
	if len(unreadable) > 0 {
		r.add(g, name, Fail, strings.Join(unreadable, "; "), "run tidemark as the server's OS user (postgres), which can read the data directory and every tablespace")
		return
	}
	r.add(g, name, Pass, fmt.Sprintf("%s and %d tablespace(s) readable", s.pgdata, n), "")
}

// repository opens the repository, proves it writable with a lease, and
// compares the store's clock with this host's.
func (r *run) repository(ctx context.Context, srv *server) *repo.Repo {
	const g = "repository"
	if r.opts.Open == nil {
		r.add(g, "reachable", Skip, "no repository configured", "pass --repo (or set repo in /etc/tidemark/tidemark.conf)")
		return nil
	}
	rp, err := r.opts.Open(ctx)
	if err != nil {
		fix := "check --repo, the network and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
		switch {
		case errors.Is(err, repo.ErrNoIdentity):
			fix = "pass the --identity (or --passphrase-file) of a key of this repository (tidemark key list shows them)"
		case errors.Is(err, repo.ErrNotRepository):
			fix = "create it with tidemark init, or correct --repo"
		}
		r.add(g, "reachable and opened", Fail, oneLine(err), fix)
		return nil
	}
	r.add(g, "reachable and opened", Pass, fmt.Sprintf("%s, repository %s, opened by key %s", rp.Store(), rp.Config().ID, rp.KeyID()), "")

	before := time.Now()
	l, err := rp.AcquireLease(ctx, lease.ScopeCheck, lease.Options{Command: "check", Logger: r.log})
	after := time.Now()
	if err != nil {
		r.add(g, "writable", Fail, oneLine(err), "give the credentials write access to the bucket (or the directory), and check that the store is not read-only")
		return rp
	}
	li := l.Info()
	info, herr := rp.Store().Head(ctx, li.Key())
	if rerr := l.Release(context.WithoutCancel(ctx)); rerr != nil {
		r.add(g, "writable", Warn, "created a lease but could not delete it: "+oneLine(rerr), "give the credentials delete rights; a stale lease expires by itself")
	} else {
		r.add(g, "writable", Pass, "created and deleted a lease ("+lease.ScopeCheck+")", "")
	}
	if herr != nil || info.ModTime.IsZero() {
		r.add(g, "clock", Skip, "the store did not say when it wrote the lease", "")
		return rp
	}
	// Stores keep whole seconds: allow for that and the round trip.
	var skew time.Duration
	switch {
	case info.ModTime.Before(before.Add(-time.Second)):
		skew = before.Sub(info.ModTime)
	case info.ModTime.After(after.Add(time.Second)):
		skew = info.ModTime.Sub(after)
	}
	detail := fmt.Sprintf("the store's clock and this host's agree within %s", (after.Sub(before) + time.Second).Round(time.Millisecond))
	if skew > 0 {
		detail = fmt.Sprintf("the store's clock is %s off this host's", skew.Round(time.Second))
	}
	switch {
	case skew > 5*time.Minute:
		r.add(g, "clock", Fail, detail, "synchronise the clocks (NTP): gc's --grace and the drills' heartbeat check assume hosts and store agree")
	case skew > 30*time.Second:
		r.add(g, "clock", Warn, detail, "synchronise the clocks (NTP)")
	default:
		r.add(g, "clock", Pass, detail, "")
	}
	return rp
}

// clusterArchive says whether the repository archives the server's cluster
// yet.
func (r *run) clusterArchive(ctx context.Context, rp *repo.Repo, cluster uint64) {
	arch := walarchive.FromRepo(rp, walarchive.Options{Logger: r.log})
	clusters, err := arch.Clusters(ctx)
	if err != nil {
		r.add("archiving", "cluster", Warn, oneLine(err), "run tidemark wal list to see what the archive holds, and check the store's permissions to list")
		return
	}
	for _, c := range clusters {
		if c == cluster {
			r.add("archiving", "cluster", Pass, fmt.Sprintf("the archive holds WAL of cluster %d", cluster), "")
			return
		}
	}
	detail := fmt.Sprintf("no WAL of cluster %d archived yet", cluster)
	if len(clusters) > 0 {
		detail += fmt.Sprintf(" (the repository holds %d other cluster(s))", len(clusters))
	}
	r.add("archiving", "cluster", Warn, detail, "archiving has not reached this repository yet: see archive_command and the round trip")
}

// agent asks the agent, when there is one or one is expected, whether it
// serves this data directory.
func (r *run) agent(ctx context.Context, srv *server) {
	const g, name = "archiving", "agent"
	socket := r.opts.Socket
	if socket == "" && srv != nil && srv.pgdata != "" {
		socket = wal.DefaultSocket(srv.pgdata)
	}
	if socket == "" {
		r.add(g, name, Skip, "no data directory known, so no socket to ask", "")
		return
	}
	if _, err := os.Stat(socket); err != nil && !r.opts.AgentExpected {
		r.add(g, name, Skip, fmt.Sprintf("none running (no %s): wal-push uploads each segment itself", socket),
			"")
		return
	}
	resp, err := wal.AskAgent(ctx, socket, wal.Request{Op: "ping"}, 10*time.Second)
	if err != nil {
		r.add(g, name, Fail, oneLine(err), "start it (systemctl start tidemark-agent), or remove the stale socket; wal-push uploads by itself meanwhile, more slowly")
		return
	}
	if srv != nil && srv.cluster != 0 && resp.Cluster != srv.cluster {
		r.add(g, name, Fail, fmt.Sprintf("the agent on %s serves cluster %d (%s), the server is %d", socket, resp.Cluster, resp.PGData, srv.cluster), "point the agent's --pgdata at this server's data directory")
		return
	}
	r.add(g, name, Pass, fmt.Sprintf("answers on %s for %s", socket, resp.PGData), "")
}

// roundTrip switches the server to a new segment and waits for it to land
// in the archive.
func (r *run) roundTrip(ctx context.Context, srv *server, rp *repo.Repo) {
	const g, name = "archiving", "round trip"
	switch {
	case r.opts.NoSwitch:
		r.add(g, name, Skip, "--no-switch", "")
		return
	case srv == nil || rp == nil:
		r.add(g, name, Skip, "needs both the server and the repository", "")
		return
	case srv.standby:
		r.add(g, name, Skip, "a standby cannot switch WAL segments; run check on the primary", "")
		return
	}
	// A record first: with nothing written since the last switch,
	// pg_switch_wal does nothing.
	var seg string
	err := srv.conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal()) FROM (SELECT pg_logical_emit_message(false, 'tidemark-check', 'switch')) m").Scan(&seg)
	if err != nil {
		r.add(g, name, Fail, "pg_switch_wal: "+oneLine(err), "run check as a superuser (or grant EXECUTE on pg_switch_wal)")
		return
	}
	key, err := walarchive.Key(srv.cluster, seg)
	if err != nil {
		r.add(g, name, Fail, oneLine(err), "")
		return
	}
	start := time.Now()
	deadline := start.Add(r.opts.SwitchWait)
	for {
		_, err := rp.Store().Head(ctx, key)
		if err == nil {
			r.add(g, name, Pass, fmt.Sprintf("switched to a new segment; %s reached the repository in %s", seg, time.Since(start).Round(10*time.Millisecond)), "")
			return
		}
		if !errors.Is(err, storage.ErrNotFound) || time.Now().After(deadline) || ctx.Err() != nil {
			detail := fmt.Sprintf("%s did not reach the repository within %s", seg, r.opts.SwitchWait)
			if !errors.Is(err, storage.ErrNotFound) {
				detail = fmt.Sprintf("looking for %s: %s", seg, oneLine(err))
			}
			var failed int64
			var lastFailed string
			if srv.conn.QueryRow(ctx, "SELECT failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver").Scan(&failed, &lastFailed) == nil && failed > 0 {
				detail += fmt.Sprintf("; pg_stat_archiver: %d failures, last on %s", failed, lastFailed)
			}
			r.add(g, name, Fail, detail, "read the server log for archive_command's error (one line from tidemark wal-push), and check that it names this repository")
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// oneLine keeps a message on one line.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
