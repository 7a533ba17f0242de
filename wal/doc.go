// Package wal archives a PostgreSQL cluster's WAL into a tidemark repository
// and brings it back during recovery: the push behind archive_command
// (synchronous, or through the agent), the agent that uploads ready segments
// ahead of PostgreSQL in parallel and answers pushes over a Unix socket, and
// the fetch behind restore_command with its spool and background prefetch.
//
// It never touches PostgreSQL's archive_status files, never writes into
// pg_wal except the file restore_command was asked for, and says "not in the
// archive" only when a listing of the archive says so.
//
// It is not the archive format (repo/walarchive) and not the command
// line (cmd/tidemark).
package wal
