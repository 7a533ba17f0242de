package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/heartbeat"
)

func (d *run) result(name, status, format string, args ...any) CheckResult {
	r := CheckResult{Name: name, Status: status, Detail: fmt.Sprintf(format, args...)}
	d.rep.Checks = append(d.rep.Checks, r)
	lvl := d.log.Info
	if status == Fail {
		lvl = d.log.Error
	}
	lvl("drill: check", "check", name, "status", status, "detail", r.Detail)
	return r
}

// checks runs every check on the promoted server, stops it, then checks
// the data pages on disk. The first failure is the drill's reason; the
// other checks still run, so the report shows everything.
func (d *run) checks(ctx context.Context) error {
	var first error
	failed := func(r CheckResult) {
		if r.Status == Fail && first == nil {
			first = fmt.Errorf("%s: %s", r.Name, r.Detail)
		}
	}
	conn, err := pgx.Connect(ctx, d.connString(d.o.DBName))
	if err != nil {
		return d.fail(fmt.Errorf("connect to the recovered server as %s to database %s: %w (pass --db-user/--db-name)", d.o.DBUser, d.o.DBName, err))
	}
	failed(d.checkTarget(ctx, conn))
	failed(d.checkHeartbeat(ctx, conn))
	for _, c := range d.o.Checks {
		failed(d.checkSQL(ctx, conn, c))
	}
	conn.Close(context.WithoutCancel(ctx))
	failed(d.checkAmcheck(ctx))
	if err := d.stop(); err != nil {
		failed(d.result("shutdown", Fail, "%v", err))
	}
	failed(d.checkPages(ctx))
	if first != nil {
		return d.fail(first)
	}
	return ctx.Err()
}

// checkTarget checks where recovery stopped, by what the promoted server
// wrote: the reason and switch point of its new timeline's history file
// (the stop PostgreSQL decided on, in a file rather than a translated log
// message) must name the target, and the recovered state must agree: the
// target transaction committed or not as asked, the last replayed commit
// no later than a target time.
func (d *run) checkTarget(ctx context.Context, conn *pgx.Conn) CheckResult {
	const name = "recovery target"
	t := &d.rep.Target
	if err := conn.QueryRow(ctx, "SELECT pg_last_xact_replay_timestamp()").Scan(&d.replayedCommit); err != nil {
		return d.result(name, Fail, "query pg_last_xact_replay_timestamp(): %v", err)
	}
	lastText := "none"
	if d.replayedCommit != nil {
		lastText = d.replayedCommit.UTC().Format(time.RFC3339Nano)
	}
	e, tli, err := d.promotionHistory()
	if err != nil {
		return d.result(name, Fail, "%v", err)
	}
	d.stopLSN = e.SwitchPoint
	t.Stopped = fmt.Sprintf("%s: %s (timeline %d to %d)", e.SwitchPoint, e.Reason, e.Parent, tli)
	if want := d.o.Target.Timeline; e.Parent != want {
		return d.result(name, Fail, "recovery ended on timeline %d, not on timeline %d it was asked to follow (%s)", e.Parent, want, t.Stopped)
	}
	after, before := "after", "before"
	if !t.Inclusive {
		after = "before"
	}
	reason := strings.TrimSpace(e.Reason)
	mismatch := func(want string) CheckResult {
		return d.result(name, Fail, "asked to stop %s, PostgreSQL stopped %s at %s (timeline history %s)", want, reason, e.SwitchPoint, pg.HistoryFileName(tli))
	}
	switch t.Kind {
	case "time":
		at, ok := strings.CutPrefix(reason, before+" ")
		if !ok {
			return mismatch("before the first commit after " + t.Time.Format(time.RFC3339Nano))
		}
		// Inclusive: before the first commit after the target; else
		// before the first at or after it.
		if next, err := parsePGTime(at); err == nil && ((t.Inclusive && !next.After(t.Time)) || (!t.Inclusive && next.Before(t.Time))) {
			return d.result(name, Fail, "stopped before a commit at %s, which does not come after the target %s", next.UTC().Format(time.RFC3339Nano), t.Time.Format(time.RFC3339Nano))
		}
		if d.replayedCommit != nil && d.replayedCommit.After(t.Time) {
			return d.result(name, Fail, "the last replayed commit is at %s, after the target %s", lastText, t.Time.Format(time.RFC3339Nano))
		}
		return d.result(name, Pass, "stopped %s at %s, the first commit after the target %s; last replayed commit %s", reason, e.SwitchPoint, t.Time.Format(time.RFC3339Nano), lastText)
	case "xid":
		// The transaction's state in the recovered data first: reported
		// also when the stop is wrong.
		xid := uint32(t.XID)
		status, err := d.xactStatus(ctx, conn, xid)
		state := fmt.Sprintf("transaction %d is %s in the recovered data", xid, status)
		if err != nil {
			state = fmt.Sprintf("the recovered server cannot tell transaction %d's status: %v", xid, err)
		}
		if want := fmt.Sprintf("%s transaction %d", after, xid); reason != want {
			return d.result(name, Fail, "asked to stop %s, PostgreSQL stopped %s at %s (timeline history %s); %s", want, reason, e.SwitchPoint, pg.HistoryFileName(tli), state)
		}
		switch {
		case err != nil:
			return d.result(name, Fail, "stopped %s, but %s", reason, state)
		case t.Inclusive && status != "committed" && !strings.Contains(t.Reached, "abort of transaction"):
			return d.result(name, Fail, "stopped %s, but %s", reason, state)
		case !t.Inclusive && status == "committed":
			return d.result(name, Fail, "stopped %s, but %s", reason, state)
		}
		return d.result(name, Pass, "stopped %s at %s; %s; last replayed commit %s", reason, e.SwitchPoint, state, lastText)
	case "name":
		if want := fmt.Sprintf("at restore point %q", t.Name); reason != fmt.Sprintf("at restore point \"%s\"", t.Name) {
			return mismatch(want)
		}
		return d.result(name, Pass, "stopped %s at %s; last replayed commit %s", reason, e.SwitchPoint, lastText)
	case "lsn":
		target, _ := pg.ParseLSN(t.LSN)
		if want := fmt.Sprintf("%s LSN %s", after, target); !strings.EqualFold(reason, want) {
			return mismatch(want)
		}
		if e.SwitchPoint < target {
			return d.result(name, Fail, "recovery ended at %s, before the target %s", e.SwitchPoint, target)
		}
		return d.result(name, Pass, "stopped %s at %s; last replayed commit %s", reason, e.SwitchPoint, lastText)
	case "immediate":
		if reason != "reached consistency" {
			return mismatch("once consistent")
		}
		if stop := pg.LSN(d.snap.StopLSN); e.SwitchPoint < stop {
			return d.result(name, Fail, "recovery ended at %s, before the end %s of backup %s", e.SwitchPoint, stop, d.snap.ID)
		}
		return d.result(name, Pass, "consistent at the end of backup %s, recovery ended at %s", d.snap.ID, e.SwitchPoint)
	}
	return d.result(name, Fail, "unknown target kind %q", t.Kind)
}

// promotionHistory reads the history file of the timeline the promotion
// began: the newest in the scratch pg_wal. Its last entry is where recovery
// ended and why.
func (d *run) promotionHistory() (pg.HistoryEntry, pg.TimelineID, error) {
	dir := filepath.Join(d.pgdata, "pg_wal")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return pg.HistoryEntry{}, 0, fmt.Errorf("read %s: %w", dir, err)
	}
	var newest pg.TimelineID
	for _, e := range ents {
		f, err := pg.ParseWALFileName(e.Name())
		if err == nil && f.Kind == pg.WALTimelineHistory && f.Timeline > newest {
			newest = f.Timeline
		}
	}
	if newest == 0 {
		return pg.HistoryEntry{}, 0, fmt.Errorf("no timeline history file in %s: the server did not promote after recovery", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, pg.HistoryFileName(newest)))
	if err != nil {
		return pg.HistoryEntry{}, 0, err
	}
	h, err := pg.ParseHistory(newest, b)
	if err != nil {
		return pg.HistoryEntry{}, 0, err
	}
	if len(h.Entries) == 0 {
		return pg.HistoryEntry{}, 0, fmt.Errorf("%s is empty", pg.HistoryFileName(newest))
	}
	return h.Entries[len(h.Entries)-1], newest, nil
}

// xactStatus asks the recovered server about the 32-bit transaction ID
// xid, in the epoch that makes it the newest such ID (pg_xact_status needs
// a 64-bit one; asking for the current one would assign an ID): committed,
// aborted, in progress, or not started.
func (d *run) xactStatus(ctx context.Context, conn *pgx.Conn, xid uint32) (string, error) {
	var next uint64
	if err := conn.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric::bigint").Scan(&next); err != nil {
		return "", err
	}
	full := next&^0xFFFFFFFF | uint64(xid)
	if full >= next && full >= 1<<32 {
		full -= 1 << 32
	}
	if full >= next {
		// Recovery stopped before the transaction took its ID.
		return fmt.Sprintf("not started (the next ID is %d)", next), nil
	}
	var status *string
	if err := conn.QueryRow(ctx, "SELECT pg_xact_status($1::text::xid8)", strconv.FormatUint(full, 10)).Scan(&status); err != nil {
		return "", err
	}
	if status == nil {
		return "", fmt.Errorf("transaction %d is too old for the commit log", xid)
	}
	return *status, nil
}

// parsePGTime reads a time as PostgreSQL writes it in messages and history
// files (timestamptz_to_str: ISO, the log time zone's offset).
func parsePGTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	var err error
	for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", "2006-01-02 15:04:05.999999-07:00:00"} {
		var t time.Time
		if t, err = time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, err
}

// checkHeartbeat proves the recovery point with the heartbeat row the
// source writes every interval: read back from the recovered data, the
// newest beat must be the one the source had written when it reached the
// target. It was written no later than the target (by its LSN, for a target
// with one, and by its time), and no earlier than one interval (plus slack)
// before the target's time: the target's own for a time, the commit time of
// the target transaction, the restore point's time, the last replayed
// commit before an LSN, the backup's end for immediate. Without a heartbeat
// the recovery point is unproven, which fails the drill unless
// AllowUnproven.
func (d *run) checkHeartbeat(ctx context.Context, conn *pgx.Conn) CheckResult {
	const name = "heartbeat"
	hb, err := heartbeat.Read(ctx, conn)
	switch {
	case errors.Is(err, heartbeat.ErrNone):
		d.rep.Proof = ProofNone
		status, how := Fail, "run tidemark agent --heartbeat 5s on the source, or pass --allow-unproven"
		if d.o.AllowUnproven {
			status, how = Skipped, "allowed by --allow-unproven"
		}
		return d.result(name, status, "no heartbeat in %s of database %s: the recovery point is not proven, only reported by PostgreSQL; %s", heartbeat.Table, d.o.DBName, how)
	case err != nil:
		return d.result(name, Fail, "%v", err)
	}
	d.rep.Proof = ProofHeartbeat
	at, lsn, interval := hb.At, hb.LSN, hb.Every
	t := d.rep.Target
	atText := at.UTC().Format(time.RFC3339Nano)
	// The point in time and WAL the newest beat must be just before.
	var when time.Time
	var what string
	var bound pg.LSN // 0: the target has no LSN of its own
	switch t.Kind {
	case "time":
		when, what = t.Time, "the target time"
	case "xid", "lsn":
		if d.replayedCommit != nil {
			when, what = *d.replayedCommit, "the last replayed commit"
			if t.Kind == "xid" && t.Inclusive {
				what = fmt.Sprintf("the end of transaction %d", uint32(t.XID))
			}
		}
		if t.Kind == "lsn" {
			bound, _ = pg.ParseLSN(t.LSN)
		}
	case "name":
		if rp, ok := restorePointTime(t.Reached); ok {
			when, what = rp, fmt.Sprintf("restore point %q", t.Name)
		} else if d.replayedCommit != nil {
			when, what = *d.replayedCommit, "the last replayed commit"
		}
	case "immediate":
		when, what, bound = d.snap.StopTime, "the end of the backup", pg.LSN(d.snap.StopLSN)
	}
	if bound != 0 && lsn > bound {
		return d.result(name, Fail, "the newest heartbeat was written at LSN %s, after the target %s: recovery went past it", lsn, bound)
	}
	if d.stopLSN != 0 && lsn > d.stopLSN {
		return d.result(name, Fail, "the newest heartbeat was written at LSN %s, after recovery ended at %s", lsn, d.stopLSN)
	}
	if when.IsZero() {
		return d.result(name, Fail, "nothing to compare the newest heartbeat (%s at LSN %s) with: no commit was replayed", atText, lsn)
	}
	behind := when.Sub(at)
	switch {
	case behind < 0 && t.Kind != "immediate":
		return d.result(name, Fail, "the newest heartbeat (%s) is after %s %s: recovery went past it", atText, what, when.UTC().Format(time.RFC3339Nano))
	case behind > interval+d.o.HeartbeatSlack:
		return d.result(name, Fail, "the newest heartbeat (%s) is %s before %s %s, more than its interval %s (+%s): recovery stopped early, the data are not those of the target, or the heartbeat was not written then",
			atText, behind.Round(time.Millisecond), what, when.UTC().Format(time.RFC3339Nano), interval, d.o.HeartbeatSlack)
	}
	return d.result(name, Pass, "newest heartbeat %s at LSN %s, %s before %s %s (interval %s)", atText, lsn, behind.Round(time.Millisecond), what, when.UTC().Format(time.RFC3339Nano), interval)
}

// restorePointTime reads the time from PostgreSQL's "recovery stopping at
// restore point "NAME", time T".
func restorePointTime(reached string) (time.Time, bool) {
	i := strings.LastIndex(reached, ", time ")
	if i < 0 {
		return time.Time{}, false
	}
	t, err := parsePGTime(reached[i+len(", time "):])
	return t, err == nil
}

// checkSQL runs one user check: one row, one column, true.
func (d *run) checkSQL(ctx context.Context, conn *pgx.Conn, c Check) CheckResult {
	rows, err := conn.Query(ctx, c.SQL, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return d.result(c.Name, Fail, "%v", err)
	}
	var vals [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			rows.Close()
			return d.result(c.Name, Fail, "%v", err)
		}
		vals = append(vals, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return d.result(c.Name, Fail, "%v", err)
	}
	if len(vals) != 1 || len(vals[0]) != 1 {
		return d.result(c.Name, Fail, "returned %d row(s); a check must return one row with one boolean", len(vals))
	}
	if b, ok := vals[0][0].(bool); !ok || !b {
		return d.result(c.Name, Fail, "returned %v, not true", vals[0][0])
	}
	return d.result(c.Name, Pass, "true")
}

// checkAmcheck runs pg_amcheck on every database, installing the amcheck
// extension where it is missing (in the scratch cluster only).
func (d *run) checkAmcheck(ctx context.Context) CheckResult {
	const name = "pg_amcheck"
	if d.o.Amcheck == "off" {
		return d.result(name, Skipped, "turned off (--amcheck off)")
	}
	skip := Skipped
	if d.o.Amcheck == "on" {
		skip = Fail
	}
	bin := pg.FindClientBin(ctx, "pg_amcheck", d.rep.PGBin, d.o.binSearch(), d.rep.PGMajor)
	if bin == "" {
		return d.result(name, skip, "no pg_amcheck installed (apt-get install postgresql-client-%d)", d.rep.PGMajor)
	}
	conn, err := pgx.Connect(ctx, d.connString(d.o.DBName))
	if err != nil {
		return d.result(name, Fail, "connect: %v", err)
	}
	var avail bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')").Scan(&avail)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return d.result(name, Fail, "query pg_available_extensions: %v", err)
	}
	if !avail {
		return d.result(name, skip, "the amcheck extension is not installed for PostgreSQL %d on this host (%s)", d.rep.PGMajor, d.rep.PGBin)
	}
	cmd := exec.CommandContext(ctx, bin, "--host", d.sock, "--port", strconv.Itoa(d.port), "--username", d.o.DBUser,
		"--no-password", "--all", "--install-missing")
	cmd.Env = serverEnv(nil)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	text := oneLine(tail(out.String(), 600))
	if err != nil {
		return d.result(name, Fail, "%s: %v: %s", bin, err, text)
	}
	return d.result(name, Pass, "%s --all: no corruption found in %s", bin, time.Since(start).Round(time.Millisecond))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// checkPages reads every relation file of the stopped scratch cluster and
// checks every page as PostgreSQL does when it reads one (pg.VerifyPage):
// a sane header, and the checksum when the cluster has data checksums.
func (d *run) checkPages(ctx context.Context) CheckResult {
	const name = "data pages"
	ctl, err := pg.ReadControlFileAt(d.pgdata)
	if err != nil {
		return d.result(name, Fail, "read pg_control: %v", err)
	}
	if ctl.State != pg.DBShutdowned {
		return d.result(name, Fail, "the server did not shut down cleanly (pg_control says %s): pages on disk may be stale", ctl.State)
	}
	bs := int(ctl.BlockSize)
	sums := ctl.DataChecksums()
	var files, pages, bad int64
	var first []string
	check := func(rel, abs string) error {
		rf, ok := pg.ParseRelPath(rel)
		if !ok || rf.Temp {
			return nil
		}
		f, err := os.Open(abs)
		if err != nil {
			return err
		}
		defer f.Close()
		files++
		buf := make([]byte, 128*bs)
		var blk uint32
		for {
			n, err := io.ReadFull(f, buf)
			for off := 0; off+bs <= n; off += bs {
				if err := pg.VerifyPage(buf[off:off+bs], pg.RelationBlock(rf.Segment, blk, ctl.RelSegSize), sums); err != nil {
					bad++
					if len(first) < 5 {
						first = append(first, fmt.Sprintf("%s block %d: %v", rel, blk, err))
					}
				}
				blk++
				pages++
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	walk := func(root, prefix string) error {
		return filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !e.Type().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			return check(prefix+filepath.ToSlash(rel), p)
		})
	}
	if err := walk(d.pgdata, ""); err != nil {
		return d.result(name, Fail, "%v", err)
	}
	links, _ := os.ReadDir(filepath.Join(d.pgdata, "pg_tblspc"))
	for _, l := range links {
		target, err := filepath.EvalSymlinks(filepath.Join(d.pgdata, "pg_tblspc", l.Name()))
		if err != nil || !strings.HasPrefix(target, d.scratch) {
			continue
		}
		if err := walk(target, "pg_tblspc/"+l.Name()+"/"); err != nil {
			return d.result(name, Fail, "%v", err)
		}
	}
	what := "headers and checksums"
	if !sums {
		what = "headers only: the cluster has no data checksums"
	}
	if bad > 0 {
		return d.result(name, Fail, "%d of %d pages in %d relation files fail (%s); first: %s", bad, pages, files, what, strings.Join(first, "; "))
	}
	return d.result(name, Pass, "%d pages in %d relation files verified (%s)", pages, files, what)
}
