package pg

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// TablespaceMapEntry is one line of a tablespace_map file: the tablespace
// with OID lives at Path, where pg_tblspc/<OID> must point after a restore.
type TablespaceMapEntry struct {
	OID  uint32
	Path string
}

// ErrInvalidTablespaceMap is returned (wrapped) for a tablespace_map that
// PostgreSQL would refuse.
var ErrInvalidTablespaceMap = errors.New("invalid tablespace_map")

// ParseTablespaceMap parses the tablespace_map that pg_backup_stop returns
// (read_tablespace_map): lines of "<oid> <path>", where a backslash escapes
// the next character so that a path may contain newlines, carriage returns
// and backslashes. The path starts after the first space and may itself
// start with spaces. A restore that remaps tablespaces needs the entries; it
// still stores the original bytes.
func ParseTablespaceMap(b []byte) ([]TablespaceMapEntry, error) {
	var (
		entries []TablespaceMapEntry
		line    []byte
		escaped bool
		lineNo  = 1
	)
	for _, c := range b {
		switch {
		case escaped:
			line = append(line, c)
			escaped = false
		case c == '\\':
			escaped = true
		case c == '\n' || c == '\r':
			if len(line) > 0 {
				e, err := parseTablespaceMapLine(string(line))
				if err != nil {
					return nil, fmt.Errorf("%w: line %d: %v", ErrInvalidTablespaceMap, lineNo, err)
				}
				entries = append(entries, e)
				line = line[:0]
			}
			if c == '\n' {
				lineNo++
			}
		default:
			line = append(line, c)
		}
	}
	if len(line) > 0 || escaped {
		return nil, fmt.Errorf("%w: the last line is not terminated", ErrInvalidTablespaceMap)
	}
	return entries, nil
}

func parseTablespaceMapLine(line string) (TablespaceMapEntry, error) {
	oid, path, found := strings.Cut(line, " ")
	if !found || oid == "" || path == "" {
		return TablespaceMapEntry{}, fmt.Errorf("%q is not \"<oid> <path>\"", line)
	}
	n, ok := parseOID(oid)
	if !ok {
		return TablespaceMapEntry{}, fmt.Errorf("tablespace OID %q is not a number", oid)
	}
	return TablespaceMapEntry{OID: n, Path: path}, nil
}

// EncodeTablespaceMap writes entries in the format PostgreSQL writes and
// ParseTablespaceMap reads, escaping newlines, carriage returns and
// backslashes in paths. A restore that moves tablespaces writes its own map
// with it.
func EncodeTablespaceMap(entries []TablespaceMapEntry) []byte {
	var b []byte
	for _, e := range entries {
		b = strconv.AppendUint(b, uint64(e.OID), 10)
		b = append(b, ' ')
		for i := 0; i < len(e.Path); i++ {
			if c := e.Path[i]; c == '\n' || c == '\r' || c == '\\' {
				b = append(b, '\\')
			}
			b = append(b, e.Path[i])
		}
		b = append(b, '\n')
	}
	return b
}
