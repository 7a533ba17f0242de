package pg

import (
	"fmt"
	"strconv"
	"strings"
)

// OIDs of the two built-in tablespaces.
const (
	DefaultTablespaceOID = 1663 // pg_default: PGDATA/base
	GlobalTablespaceOID  = 1664 // pg_global: PGDATA/global
)

// Fork is a relation fork (ForkNumber).
type Fork int

// The relation forks, numbered as in PostgreSQL.
const (
	ForkMain Fork = iota
	ForkFSM
	ForkVM
	ForkInit
)

// Suffix returns the file name suffix of the fork: "", "_fsm", "_vm" or
// "_init".
func (f Fork) Suffix() string {
	switch f {
	case ForkFSM:
		return "_fsm"
	case ForkVM:
		return "_vm"
	case ForkInit:
		return "_init"
	}
	return ""
}

func (f Fork) String() string {
	switch f {
	case ForkMain:
		return "main"
	case ForkFSM:
		return "fsm"
	case ForkVM:
		return "vm"
	case ForkInit:
		return "init"
	}
	return "Fork(" + strconv.Itoa(int(f)) + ")"
}

// RelFile identifies one file of relation data.
type RelFile struct {
	// Tablespace is DefaultTablespaceOID for base/, GlobalTablespaceOID for
	// global/, or the OID under pg_tblspc/.
	Tablespace uint32
	// TablespaceDir is the version directory inside a tablespace,
	// "PG_<major>_<catversion>"; empty for base/ and global/.
	TablespaceDir string
	Database      uint32 // 0 for global/
	RelNumber     uint32 // relfilenode
	Fork          Fork
	Segment       uint32 // the ".N" suffix; 0 for the first 1 GiB
	// Temp is set for a temporary relation (t<backend>_<relfilenode>), which
	// a backup skips; Backend is then the owning backend's number.
	Temp    bool
	Backend uint32
}

// Path returns the file's path relative to PGDATA.
func (r RelFile) Path() string {
	var b strings.Builder
	switch {
	case r.Tablespace == GlobalTablespaceOID:
		b.WriteString("global/")
	case r.Tablespace == DefaultTablespaceOID:
		b.WriteString("base/" + strconv.FormatUint(uint64(r.Database), 10) + "/")
	default:
		b.WriteString("pg_tblspc/" + strconv.FormatUint(uint64(r.Tablespace), 10) + "/" + r.TablespaceDir + "/" +
			strconv.FormatUint(uint64(r.Database), 10) + "/")
	}
	b.WriteString(r.FileName())
	return b.String()
}

// FileName returns the file's name within its database directory.
func (r RelFile) FileName() string {
	s := strconv.FormatUint(uint64(r.RelNumber), 10) + r.Fork.Suffix()
	if r.Temp {
		s = "t" + strconv.FormatUint(uint64(r.Backend), 10) + "_" + s
	}
	if r.Segment > 0 {
		s += "." + strconv.FormatUint(uint64(r.Segment), 10)
	}
	return s
}

// ParseRelPath recognises a relation data file by its path relative to PGDATA
// (slash-separated): base/<db>/<file>, global/<file> or
// pg_tblspc/<oid>/PG_<major>_<catversion>/<db>/<file>. A path relative to a
// tablespace directory can be given as "pg_tblspc/<oid>/" + path. ok is false
// for anything else, including the other files in those directories
// (PG_VERSION, pg_filenode.map, pg_internal.init, ...): those are not relation
// data and are backed up whole.
//
// Names are accepted only in the one spelling PostgreSQL writes (no leading
// zeros, no ".0" segment), so a stray file can never be mistaken for a
// relation and Path gives back the same string.
func ParseRelPath(path string) (r RelFile, ok bool) {
	parts := strings.Split(path, "/")
	var file string
	switch {
	case len(parts) == 2 && parts[0] == "global":
		r.Tablespace, file = GlobalTablespaceOID, parts[1]
	case len(parts) == 3 && parts[0] == "base":
		db, ok := parseOID(parts[1])
		if !ok {
			return RelFile{}, false
		}
		r.Tablespace, r.Database, file = DefaultTablespaceOID, db, parts[2]
	case len(parts) == 5 && parts[0] == "pg_tblspc":
		ts, ok1 := parseOID(parts[1])
		_, _, ok2 := ParseTablespaceDir(parts[2])
		db, ok3 := parseOID(parts[3])
		if !ok1 || !ok2 || !ok3 {
			return RelFile{}, false
		}
		r.Tablespace, r.TablespaceDir, r.Database, file = ts, parts[2], db, parts[4]
	default:
		return RelFile{}, false
	}
	if !parseRelFileName(file, &r) {
		return RelFile{}, false
	}
	if r.Temp && r.Tablespace == GlobalTablespaceOID {
		return RelFile{}, false // temporary relations never live in pg_global
	}
	return r, true
}

// parseRelFileName parses [t<backend>_]<relfilenode>[_<fork>][.<segment>]
// (parse_filename_for_nontemp_relation and looks_like_temp_rel_name).
func parseRelFileName(name string, r *RelFile) bool {
	if strings.HasPrefix(name, "t") {
		backend, rest, found := strings.Cut(name[1:], "_")
		n, ok := parseDecimal(backend)
		if !found || !ok {
			return false
		}
		r.Temp, r.Backend, name = true, n, rest
	}
	if base, seg, found := strings.Cut(name, "."); found {
		n, ok := parseDecimal(seg)
		if !ok || n == 0 {
			return false
		}
		r.Segment, name = n, base
	}
	if base, fork, found := strings.Cut(name, "_"); found {
		switch fork {
		case "fsm":
			r.Fork = ForkFSM
		case "vm":
			r.Fork = ForkVM
		case "init":
			r.Fork = ForkInit
		default:
			return false
		}
		name = base
	}
	n, ok := parseOID(name)
	if !ok {
		return false
	}
	r.RelNumber = n
	return true
}

// parseDecimal parses a canonical unsigned 32-bit decimal: digits only, no
// leading zero unless it is "0".
func parseDecimal(s string) (uint32, bool) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// parseOID is parseDecimal for an OID, which is never 0.
func parseOID(s string) (uint32, bool) {
	n, ok := parseDecimal(s)
	return n, ok && n != 0
}

// TablespaceDir returns the name of the directory a major version creates
// inside each tablespace (TABLESPACE_VERSION_DIRECTORY), e.g.
// "PG_16_202307071". Clusters of different versions can share a tablespace
// because of it, which is why a backup must copy only its own.
func TablespaceDir(major int, catalogVersion uint32) string {
	return fmt.Sprintf("PG_%d_%d", major, catalogVersion)
}

// ParseTablespaceDir parses a tablespace version directory name.
func ParseTablespaceDir(name string) (major int, catalogVersion uint32, ok bool) {
	rest, found := strings.CutPrefix(name, "PG_")
	if !found {
		return 0, 0, false
	}
	m, c, found := strings.Cut(rest, "_")
	mv, ok1 := parseDecimal(m)
	cv, ok2 := parseDecimal(c)
	if !found || !ok1 || !ok2 || mv == 0 || cv == 0 {
		return 0, 0, false
	}
	return int(mv), cv, true
}

// ParseTablespaceLink parses a PGDATA-relative path to a tablespace link,
// pg_tblspc/<oid>, and returns the OID. PostgreSQL makes it a symbolic link
// to the tablespace's location (or, after some restores, a directory).
func ParseTablespaceLink(path string) (uint32, bool) {
	rest, found := strings.CutPrefix(path, "pg_tblspc/")
	if !found {
		return 0, false
	}
	return parseOID(rest)
}
