package walarchive

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tidemarkdb/tidemark/pg"
)

// Object keys, under the repository prefix:
//
//	wal/<cluster>/cluster                          the cluster marker
//	wal/<cluster>/<TTTTTTTTXXXXXXXX>/<segment>     segments, and beside them
//	wal/<cluster>/<TTTTTTTTXXXXXXXX>/<segment>.partial
//	wal/<cluster>/<TTTTTTTTXXXXXXXX>/<segment>.<offset>.backup
//	wal/<cluster>/<TTTTTTTTXXXXXXXX>/<segment>.summary   block summaries
//	wal/<cluster>/history/<TTTTTTTT>.history       timeline history files
//
// <cluster> is the system identifier in decimal. The directory of a segment
// is its timeline and log (pg.WALFile.LogDir), so one listing of one
// directory covers one 4 GiB stretch of one timeline (256 segments of 16
// MiB) and a listing of a whole cluster comes back in timeline, then segment
// order. History files have a directory of their own so that one short
// listing finds every timeline.
const (
	// Prefix is the key prefix of the whole WAL archive.
	Prefix = "wal/"
	// MarkerName is the object name of the cluster marker.
	MarkerName = "cluster"
	// HistoryDir is the directory of timeline history files.
	HistoryDir = "history"
)

// ClusterPrefix returns the key prefix of one cluster's WAL.
func ClusterPrefix(cluster uint64) string {
	return Prefix + strconv.FormatUint(cluster, 10) + "/"
}

// Key returns the object key of the WAL file called name (a segment,
// .partial, .backup or .history file) of cluster.
func Key(cluster uint64, name string) (string, error) {
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return "", err
	}
	return fileKey(cluster, f), nil
}

func fileKey(cluster uint64, f pg.WALFile) string {
	if f.Kind == pg.WALTimelineHistory {
		return ClusterPrefix(cluster) + HistoryDir + "/" + f.Name()
	}
	return ClusterPrefix(cluster) + f.LogDir() + "/" + f.Name()
}

// DirKey returns the key prefix (ending in "/") of the directory that holds
// the WAL file called name: what ListDir lists.
func DirKey(cluster uint64, name string) (string, error) {
	k, err := Key(cluster, name)
	if err != nil {
		return "", err
	}
	return k[:strings.LastIndexByte(k, '/')+1], nil
}

// MarkerKey returns the key of a cluster's marker.
func MarkerKey(cluster uint64) string { return ClusterPrefix(cluster) + MarkerName }

// SummaryKey returns the key of the block summary of segment seg of
// timeline tli of cluster: beside the segment, its name and SummarySuffix.
func SummaryKey(cluster uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32) string {
	k, _ := Key(cluster, pg.SegmentName(tli, seg, segSize))
	return k + SummarySuffix
}

// parseKey splits a key under wal/ into the cluster and the file. ok is false
// for the marker and for keys that are not an archived WAL file in the right
// directory (which listings report as foreign objects rather than trust).
// summary is set for the block summary of the segment f.
func parseKey(key string) (cluster uint64, f pg.WALFile, summary, ok bool) {
	if k, found := strings.CutSuffix(key, SummarySuffix); found {
		cluster, f, ok = parseFileKey(k)
		return cluster, f, true, ok && f.Kind == pg.WALSegment
	}
	cluster, f, ok = parseFileKey(key)
	return cluster, f, false, ok
}

func parseFileKey(key string) (cluster uint64, f pg.WALFile, ok bool) {
	rest, found := strings.CutPrefix(key, Prefix)
	if !found {
		return 0, f, false
	}
	cs, rest, found := strings.Cut(rest, "/")
	if !found {
		return 0, f, false
	}
	cluster, err := strconv.ParseUint(cs, 10, 64)
	if err != nil || strconv.FormatUint(cluster, 10) != cs {
		return 0, f, false
	}
	dir, name, found := strings.Cut(rest, "/")
	if !found || strings.Contains(name, "/") {
		return 0, f, false
	}
	f, err = pg.ParseWALFileName(name)
	if err != nil {
		return 0, f, false
	}
	if fileKey(cluster, f) != key || (dir == HistoryDir) != (f.Kind == pg.WALTimelineHistory) {
		return 0, f, false
	}
	return cluster, f, true
}

// ParseKey splits the key of an archived WAL file into its cluster and
// file. ok is false for the marker and for any key that is not an archived
// WAL file in its right place, block summaries included: they are not WAL
// files, and a copy without them only makes incrementals fall back to the
// LSN scan.
func ParseKey(key string) (cluster uint64, f pg.WALFile, ok bool) {
	cluster, f, summary, ok := parseKey(key)
	return cluster, f, ok && !summary
}

// parsePieceKey splits a key under wal/ into the cluster and a piece in its
// right directory.
func parsePieceKey(key string) (cluster uint64, p Piece, ok bool) {
	c, ok := ParseCluster(key)
	if !ok {
		return 0, p, false
	}
	p, ok = ParsePieceName(key[strings.LastIndexByte(key, '/')+1:])
	if !ok || PieceKey(c, p) != key {
		return 0, p, false
	}
	return c, p, true
}

// ParseCluster parses the cluster part of a key prefix "wal/<cluster>/...".
func ParseCluster(key string) (uint64, bool) {
	rest, found := strings.CutPrefix(key, Prefix)
	if !found {
		return 0, false
	}
	cs, _, found := strings.Cut(rest, "/")
	if !found {
		return 0, false
	}
	c, err := strconv.ParseUint(cs, 10, 64)
	if err != nil || strconv.FormatUint(c, 10) != cs {
		return 0, false
	}
	return c, true
}

// checkName refuses a name that is not a WAL archive file name.
func checkName(name string) (pg.WALFile, error) {
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return f, &InvalidFileError{Name: name, Err: err}
	}
	if f.Name() != name {
		return f, &InvalidFileError{Name: name, Err: fmt.Errorf("not in PostgreSQL's spelling (%s)", f.Name())}
	}
	return f, nil
}
