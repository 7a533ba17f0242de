// Package restore brings a snapshot back as a PostgreSQL data directory ready
// for point-in-time recovery: it chooses the snapshot for a recovery target on
// a timeline that leads to it, checks that the WAL recovery will need is in
// the archive, writes the files (into an empty directory, or as a delta into an
// existing one), and writes backup_label, tablespace_map, the recovery settings
// and recovery.signal, with global/pg_control last so that a restore that was
// interrupted can never be started by mistake.
//
// It is not the WAL archive (it asks one, through the small Archive
// interface, what timelines and segments exist), not restore_command (the
// recovery settings it writes call tidemark wal-fetch) and not the server: it
// never starts PostgreSQL. Everything it refuses, it refuses before writing a
// byte, with a *RefusedError that says what to do.
package restore
