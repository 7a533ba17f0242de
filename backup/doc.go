// Package backup takes base backups of a running PostgreSQL cluster into a
// tidemark repository: full, or incremental at page level against the newest
// snapshot of the same cluster on the same timeline lineage.
//
// A run holds one connection for the whole backup (pg_backup_start ...
// pg_backup_stop, the non-exclusive low-level API), reads PGDATA and every
// tablespace directly and in parallel, leaves out what PostgreSQL rebuilds
// (pg.ClassifyBackupPath, unlogged relations), verifies page checksums on the
// way, reads global/pg_control last and commits the snapshot only after the
// WAL from start to stop is confirmed archived. docs/snapshot.md describes
// the snapshot's contents, which restore and verify read.
//
// Relation files are page maps (repo/filemap): a full capture stores
// 1 MiB slots; an incremental stores only the pages changed since the
// parent's start LSN, concatenated into patch blobs, and overlays them onto
// the parent's map so that every map is complete on its own. Changes are
// found from PostgreSQL 17's WAL summaries when they cover the range (and
// are cross-checked by sampling), else by reading page LSNs.
//
// This package is not the WAL archive (it asks one, through WALConfirmer),
// not the repository format (repo, repo/filemap) and not restore.
package backup
