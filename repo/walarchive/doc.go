// Package walarchive is the WAL part of the tidemark repository format: where
// each archived WAL file lives (keys), what its object holds (an age stream
// of a small authenticated record followed by the zstd-compressed file), and
// what is in the archive (listings by timeline, ranges, gaps, history files,
// and whether the WAL between two LSNs is all there).
//
// Writes are create-only. A file pushed again with the same bytes is a
// success (PostgreSQL re-pushes after a crash); a different file under an
// existing name is a *ConflictError and the archived object is never
// replaced. Reads verify everything: the age authentication, the record, the
// name and cluster the object claims against the key it was found under, and
// a keyed MAC of the plaintext, so that a swapped, truncated or forged object
// is a *CorruptError naming its key.
//
// It is not the archiver: reading pg_wal, talking to PostgreSQL, the agent
// and the restore spool are package wal. It knows PostgreSQL only through
// package pg (file names, segment headers, timeline histories).
package walarchive
