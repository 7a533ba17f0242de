package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/backup"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/verify/drill"
	"github.com/tidemarkdb/tidemark/wal"
)

// Prometheus metrics are written in the text exposition format to a file
// that node_exporter's textfile collector reads (--metrics-file on the
// one-shot commands), atomically: a scrape never sees half a file. Give
// each command its own file (tidemark-backup.prom, tidemark-drill.prom, ...):
// each rewrites its file whole.

func metricsFileFlag() cli.Flag {
	return stringFlag("metrics-file", "write Prometheus metrics to this file (node_exporter textfile format), atomically")
}

// metrics is a set of metric families, in the order added.
type metrics struct {
	fams []*family
}

type family struct {
	name, typ, help string
	samples         []sample
}

type sample struct {
	labels []string // name, value, name, value, ...
	value  float64
}

// gauge adds a sample of a gauge; labels are name, value pairs.
func (m *metrics) gauge(name, help string, value float64, labels ...string) {
	m.add(name, "gauge", help, value, labels...)
}

func (m *metrics) add(name, typ, help string, value float64, labels ...string) {
	var f *family
	for _, x := range m.fams {
		if x.name == name {
			f = x
		}
	}
	if f == nil {
		f = &family{name: name, typ: typ, help: help}
		m.fams = append(m.fams, f)
	}
	f.samples = append(f.samples, sample{labels: labels, value: value})
}

// text renders the exposition format.
func (m *metrics) text() []byte {
	var b bytes.Buffer
	for _, f := range m.fams {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.typ)
		for _, s := range f.samples {
			b.WriteString(f.name)
			if len(s.labels) > 0 {
				b.WriteByte('{')
				for i := 0; i+1 < len(s.labels); i += 2 {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", s.labels[i], escapeLabel(s.labels[i+1]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(formatValue(s.value))
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(s)
}

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// write replaces path with the metrics: a temporary file in the same
// directory, synced, then renamed over it.
func (m *metrics) write(path string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("--metrics-file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(m.text()); err != nil {
		f.Close()
		return fmt.Errorf("--metrics-file %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("--metrics-file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("--metrics-file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--metrics-file %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("--metrics-file %s: %w", path, err)
	}
	return nil
}

// writeMetrics writes m to --metrics-file when it is set.
// A failure is logged, not returned: the command's own work is done, and
// the metrics going stale is what monitoring notices.
func writeMetrics(c *cli.Context, m *metrics) error {
	p := c.String("metrics-file")
	if p == "" {
		return nil
	}
	if err := m.write(p); err != nil {
		if log, lerr := newLogger(c, c.App.ErrWriter); lerr == nil {
			log.Error("could not write the metrics file; the command itself succeeded", "file", p, "err", err)
		}
	}
	return nil
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func clusterLabel(c uint64) []string { return []string{"cluster", strconv.FormatUint(c, 10)} }

// addSnapshotMetrics adds, per cluster, the last successful backup and the
// number of snapshots.
func addSnapshotMetrics(m *metrics, snaps []*repo.Snapshot) {
	last := map[uint64]*repo.Snapshot{}
	count := map[uint64]int{}
	for _, s := range snaps {
		count[s.Cluster]++
		if l := last[s.Cluster]; l == nil || s.StopTime.After(l.StopTime) {
			last[s.Cluster] = s
		}
	}
	var clusters []uint64
	for c := range last {
		clusters = append(clusters, c)
	}
	slices.Sort(clusters)
	for _, c := range clusters {
		s := last[c]
		m.gauge("tidemark_last_backup_timestamp_seconds", "When the newest snapshot of the cluster stopped (Unix time).", unixSeconds(s.StopTime), clusterLabel(c)...)
		m.gauge("tidemark_last_backup_duration_seconds", "How long the newest snapshot of the cluster took.", s.Stats.Seconds, clusterLabel(c)...)
		m.gauge("tidemark_snapshots", "Snapshots in the repository.", float64(count[c]), clusterLabel(c)...)
	}
}

// addDrillMetrics adds the result of a drill.
func addDrillMetrics(m *metrics, r *drill.Report) {
	l := clusterLabel(r.Cluster)
	m.gauge("tidemark_drill_last_run_timestamp_seconds", "When the last restore drill of the cluster finished (Unix time).", unixSeconds(r.Finished), l...)
	m.gauge("tidemark_drill_success", "1 if the last restore drill of the cluster passed, 0 if it failed.", boolValue(r.OK), l...)
	m.gauge("tidemark_drill_recover_seconds", "Time to recover in the last drill: restore plus WAL replay.", r.RecoverSeconds, l...)
	m.gauge("tidemark_drill_restore_seconds", "Time the last drill took to restore the files.", r.RestoreSeconds, l...)
	m.gauge("tidemark_drill_replay_seconds", "Time the last drill took to replay WAL to its target and promote.", r.ReplaySeconds, l...)
}

// repositoryMetrics lists the whole repository once: its size by kind of
// object, each cluster's last backup and last drill, and how old the newest
// archived WAL object of each cluster is.
func repositoryMetrics(ctx context.Context, r *repo.Repo) (*metrics, error) {
	m := &metrics{}
	walNewest := map[uint64]time.Time{}
	usage, err := repo.Usage(ctx, r.Store(), func(oi storage.ObjectInfo) {
		if c, ok := walarchive.ParseCluster(oi.Key); ok && oi.ModTime.After(walNewest[c]) && !strings.HasSuffix(oi.Key, "/"+walarchive.MarkerName) {
			walNewest[c] = oi.ModTime
		}
	})
	if err != nil {
		return nil, err
	}
	var total float64
	kinds := make([]string, 0, len(usage))
	for k := range usage {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		total += float64(usage[k].Bytes)
		m.gauge("tidemark_repository_bytes", "Bytes stored in the repository, by kind of object.", float64(usage[k].Bytes), "kind", k)
	}
	for _, k := range kinds {
		m.gauge("tidemark_repository_objects", "Objects in the repository, by kind.", float64(usage[k].Objects), "kind", k)
	}
	m.gauge("tidemark_repository_total_bytes", "Bytes stored in the repository.", total)
	snaps, err := r.Snapshots(ctx, 0)
	if err != nil {
		return nil, err
	}
	addSnapshotMetrics(m, snaps)
	var clusters []uint64
	for c := range walNewest {
		clusters = append(clusters, c)
	}
	slices.Sort(clusters)
	for _, c := range clusters {
		m.gauge("tidemark_wal_last_archived_timestamp_seconds", "When the newest WAL object of the cluster was stored (Unix time).", unixSeconds(walNewest[c]), clusterLabel(c)...)
	}
	seen := map[uint64]bool{}
	for _, s := range snaps {
		if seen[s.Cluster] {
			continue
		}
		seen[s.Cluster] = true
		rep, err := drill.Latest(ctx, r, s.Cluster)
		if err != nil {
			return nil, err
		}
		if rep != nil {
			addDrillMetrics(m, rep)
		}
	}
	return m, nil
}

func metricsCommand() *cli.Command {
	return &cli.Command{
		Name:  "metrics",
		Usage: "write the repository's Prometheus metrics: last backup, last drill, WAL archived, size",
		Description: "Lists the whole repository once (one LIST per 1000 objects) and reads each cluster's snapshots and newest\n" +
			"drill report. Writes --metrics-file, or prints the metrics without it.",
		Flags:  flagSet(repoFlags(), []cli.Flag{metricsFileFlag()}),
		Action: runMetrics,
	}
}

func runMetrics(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	m, err := repositoryMetrics(c.Context, r)
	if err != nil {
		return err
	}
	m.gauge("tidemark_metrics_last_run_timestamp_seconds", "When tidemark metrics last ran (Unix time).", unixSeconds(time.Now()))
	if c.String("metrics-file") == "" {
		_, err := c.App.Writer.Write(m.text())
		return err
	}
	return m.write(c.String("metrics-file"))
}

// heartbeatMetrics writes the agent's --metrics-file after each heartbeat:
// what the source server says about its archiver, and how far behind each
// repository the agent archives to is (lag returns nil until the agent
// runs).
func heartbeatMetrics(c *cli.Context, log *slog.Logger, lag func() []wal.Lag) func(wal.Beat) {
	path := c.String("metrics-file")
	if path == "" {
		return nil
	}
	return func(b wal.Beat) {
		m := &metrics{}
		for _, l := range lag() {
			rl := []string{"repository", l.Store}
			m.gauge("tidemark_archive_repository_lag_files", "Ready WAL files the agent has not yet made durable in this repository.", float64(l.Files), rl...)
			m.gauge("tidemark_archive_repository_lag_seconds", "How long the oldest of them has waited.", l.Oldest.Seconds(), rl...)
			if !l.LastArchived.IsZero() {
				m.gauge("tidemark_archive_repository_last_archived_timestamp_seconds", "When the agent last made a file durable in this repository (Unix time).", unixSeconds(l.LastArchived), rl...)
			}
		}
		if !b.InRecovery {
			m.gauge("tidemark_heartbeat_timestamp_seconds", "When the agent last wrote tidemark.heartbeat (Unix time).", unixSeconds(b.At))
			m.gauge("tidemark_archive_lag_segments", "Complete WAL segments PostgreSQL has not archived yet (pg_stat_archiver against pg_current_wal_lsn).", float64(b.LagSegments))
		}
		m.gauge("tidemark_archive_last_archived_timestamp_seconds", "When PostgreSQL last archived a file (pg_stat_archiver).", unixSeconds(b.LastArchivedTime))
		m.gauge("tidemark_archive_archived_total", "Files PostgreSQL archived since the statistics were reset.", float64(b.Archived))
		m.gauge("tidemark_archive_failed_total", "archive_command failures since the statistics were reset.", float64(b.Failed))
		if err := m.write(path); err != nil {
			log.Warn("metrics file", "err", err)
		}
	}
}

// writeBackupMetrics writes backup's --metrics-file after a committed
// backup.
func writeBackupMetrics(c *cli.Context, res *backup.Result) error {
	if c.String("metrics-file") == "" || res == nil || res.Snapshot == nil {
		return nil
	}
	m := &metrics{}
	s := res.Snapshot
	l := clusterLabel(s.Cluster)
	m.gauge("tidemark_last_backup_timestamp_seconds", "When the newest snapshot of the cluster stopped (Unix time).", unixSeconds(s.StopTime), l...)
	m.gauge("tidemark_last_backup_duration_seconds", "How long the newest snapshot of the cluster took.", s.Stats.Seconds, l...)
	m.gauge("tidemark_last_backup_logical_bytes", "Bytes of files the newest backup covered.", float64(res.Snapshot.Stats.LogicalBytes), l...)
	m.gauge("tidemark_last_backup_new_bytes", "Bytes the newest backup stored (after deduplication and compression).", float64(res.Snapshot.Stats.NewBytes), l...)
	return writeMetrics(c, m)
}
