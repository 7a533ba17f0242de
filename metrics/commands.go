package metrics

import (
	"time"

	"github.com/tidemarkdb/tidemark/backup"
	"github.com/tidemarkdb/tidemark/gc"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/retention"
	"github.com/tidemarkdb/tidemark/verify"
	"github.com/tidemarkdb/tidemark/verify/drill"
	"github.com/tidemarkdb/tidemark/wal"
)

// What each one-shot command writes after its work.

// AddBackup adds a committed backup.
func (s *Set) AddBackup(res *backup.Result) {
	if res == nil || res.Snapshot == nil {
		return
	}
	s.addLastBackup(res.Snapshot)
}

// addLastBackup adds the newest snapshot of its cluster.
func (s *Set) addLastBackup(sn *repo.Snapshot) {
	l := clusterLabel(sn.Cluster)
	s.gauge("tidemark_last_backup_timestamp_seconds", "When the newest snapshot of the cluster stopped (Unix time).", UnixSeconds(sn.StopTime), l...)
	s.gauge("tidemark_last_backup_duration_seconds", "How long the newest snapshot of the cluster took.", sn.Stats.Seconds, l...)
	s.gauge("tidemark_last_backup_logical_bytes", "Bytes of files the newest backup covered.", float64(sn.Stats.LogicalBytes), l...)
	s.gauge("tidemark_last_backup_new_bytes", "Bytes the newest backup stored (after deduplication and compression).", float64(sn.Stats.NewBytes), l...)
}

// AddDrill adds the result of a drill.
func (s *Set) AddDrill(r *drill.Report) {
	l := clusterLabel(r.Cluster)
	s.gauge("tidemark_drill_last_run_timestamp_seconds", "When the last restore drill of the cluster finished (Unix time).", UnixSeconds(r.Finished), l...)
	s.gauge("tidemark_drill_success", "1 if the last restore drill of the cluster passed, 0 if it failed.", boolValue(r.OK), l...)
	s.gauge("tidemark_drill_recover_seconds", "Time to recover in the last drill: restore plus WAL replay.", r.RecoverSeconds, l...)
	s.gauge("tidemark_drill_restore_seconds", "Time the last drill took to restore the files.", r.RestoreSeconds, l...)
	s.gauge("tidemark_drill_replay_seconds", "Time the last drill took to replay WAL to its target and promote.", r.ReplaySeconds, l...)
}

// AddVerify adds a finished verify.
func (s *Set) AddVerify(rep *verify.Report) {
	s.gauge("tidemark_verify_last_run_timestamp_seconds", "When tidemark verify last finished (Unix time).", UnixSeconds(rep.Finished))
	s.gauge("tidemark_verify_success", "1 if the last verify found no problem.", boolValue(rep.OK()))
	s.gauge("tidemark_verify_problems", "Problems the last verify found.", float64(len(rep.Problems)))
	s.gauge("tidemark_verify_duration_seconds", "How long the last verify took.", rep.Finished.Sub(rep.Started).Seconds())
	s.gauge("tidemark_verify_packs_read", "Packs the last verify downloaded and checked.", float64(rep.Stats.PacksRead))
	s.gauge("tidemark_repository_pack_bytes", "Bytes of packs in the repository.", float64(rep.Stats.PackBytes))
	s.gauge("tidemark_repository_snapshot_and_pack_bytes", "Bytes of snapshots and packs listed by the last verify.", float64(rep.Stats.RepositoryBytes))
}

// AddGC adds a gc run that finished at end after took.
func (s *Set) AddGC(res *gc.Result, end time.Time, took time.Duration) {
	s.gauge("tidemark_gc_last_run_timestamp_seconds", "When tidemark gc last finished (Unix time).", UnixSeconds(end))
	s.gauge("tidemark_gc_duration_seconds", "How long the last gc took.", took.Seconds())
	s.gauge("tidemark_gc_deleted_bytes", "Bytes of packs the last gc deleted.", float64(res.Deleted.Bytes))
	s.gauge("tidemark_gc_deleted_packs", "Packs the last gc deleted.", float64(res.Deleted.Packs))
	s.gauge("tidemark_gc_quarantined_bytes", "Bytes of packs the last gc quarantined.", float64(res.Quarantined.Bytes))
	s.gauge("tidemark_gc_locked_bytes", "Bytes of packs the last gc left because the object lock still holds them.", float64(res.Locked.Bytes))
	s.gauge("tidemark_gc_pending_quarantines", "Quarantine records waiting for leases to end.", float64(res.Pending))
	s.gauge("tidemark_gc_pack_bytes_left", "Bytes of packs left after the last gc.", float64(res.PackBytes-res.Deleted.Bytes))
}

// AddExpire adds an expire run that finished at end, also one that left
// clusters alone.
func (s *Set) AddExpire(res *retention.Result, end time.Time) {
	s.gauge("tidemark_expire_last_run_timestamp_seconds", "When tidemark expire last finished (Unix time).", UnixSeconds(end))
	if res == nil {
		return
	}
	for _, cr := range res.Clusters {
		l := clusterLabel(cr.Cluster)
		kept := 0
		for _, d := range cr.Decisions {
			if d.Keep {
				kept++
			}
		}
		s.gauge("tidemark_expire_snapshots_kept", "Snapshots the policy keeps.", float64(kept), l...)
		s.gauge("tidemark_expire_snapshots_removed", "Snapshots the last expire removed.", float64(cr.Removed), l...)
		s.gauge("tidemark_expire_wal_removed_bytes", "Bytes of WAL the last expire removed.", float64(cr.WALBytes), l...)
	}
}

// AddHeartbeat adds what a heartbeat saw of the server's archiver.
func (s *Set) AddHeartbeat(b wal.Beat) {
	if !b.InRecovery {
		s.gauge("tidemark_heartbeat_timestamp_seconds", "When the agent last wrote tidemark.heartbeat (Unix time).", UnixSeconds(b.At))
		s.gauge("tidemark_archive_lag_segments", "Complete WAL segments PostgreSQL has not archived yet (pg_stat_archiver against pg_current_wal_lsn).", float64(b.LagSegments))
	}
	s.gauge("tidemark_archive_last_archived_timestamp_seconds", "When PostgreSQL last archived a file (pg_stat_archiver).", UnixSeconds(b.LastArchivedTime))
	s.gauge("tidemark_archive_archived_total", "Files PostgreSQL archived since the statistics were reset.", float64(b.Archived))
	s.gauge("tidemark_archive_failed_total", "archive_command failures since the statistics were reset.", float64(b.Failed))
}
