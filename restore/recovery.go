package restore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// recoveryKeys are the settings a restore owns in postgresql.auto.conf. Any
// left there by an earlier restore of the cluster that was then backed up
// again are removed: two recovery targets make PostgreSQL refuse to start,
// and a stale restore_command would fetch from the wrong place.
var recoveryKeys = map[string]bool{
	"restore_command":           true,
	"recovery_end_command":      true,
	"recovery_target":           true,
	"recovery_target_time":      true,
	"recovery_target_xid":       true,
	"recovery_target_lsn":       true,
	"recovery_target_name":      true,
	"recovery_target_inclusive": true,
	"recovery_target_action":    true,
	"recovery_target_timeline":  true,
}

// standbyKeys are the settings a standby restore owns besides
// recoveryKeys: the way to the primary is the operator's to give anew.
var standbyKeys = map[string]bool{
	"primary_conninfo":  true,
	"primary_slot_name": true,
}

// setting is one name = value line.
type setting struct{ name, value string }

func (s setting) String() string { return s.name + " = " + quoteConf(s.value) }

// recoverySettings are the lines a restore writes for target t along
// timeline tli. The timeline is always a number: recovery must not wander
// onto whatever timeline is newest when it runs. A standby is the
// exception: it follows its primary onto every new timeline ("latest"),
// with no target.
func recoverySettings(t pg.RecoveryTarget, tli pg.TimelineID, restoreCommand string, standby *Standby) []setting {
	s := []setting{{"restore_command", restoreCommand}}
	if standby != nil {
		s = append(s, setting{"recovery_target_timeline", "latest"})
		if standby.PrimaryConnInfo != "" {
			s = append(s, setting{"primary_conninfo", standby.PrimaryConnInfo})
		}
		if standby.SlotName != "" {
			s = append(s, setting{"primary_slot_name", standby.SlotName})
		}
		return s
	}
	switch t.Kind {
	case pg.TargetImmediate:
		s = append(s, setting{"recovery_target", "immediate"})
	case pg.TargetTime:
		s = append(s, setting{"recovery_target_time", t.Time.UTC().Format("2006-01-02 15:04:05.999999-07")})
	case pg.TargetLSN:
		s = append(s, setting{"recovery_target_lsn", t.LSN.String()})
	case pg.TargetXID:
		s = append(s, setting{"recovery_target_xid", strconv.FormatUint(t.XID, 10)})
	case pg.TargetName:
		s = append(s, setting{"recovery_target_name", t.Name})
	}
	if t.Kind != pg.TargetEnd && t.Kind != pg.TargetImmediate && t.Inclusive != nil {
		s = append(s, setting{"recovery_target_inclusive", strconv.FormatBool(*t.Inclusive)})
	}
	if t.Kind != pg.TargetEnd {
		action := t.Action
		if action == "" {
			action = pg.ActionPause
		}
		s = append(s, setting{"recovery_target_action", action})
	}
	s = append(s, setting{"recovery_target_timeline", strconv.Itoa(int(tli))})
	return s
}

// quoteConf quotes a value for postgresql.conf, whose parser reads
// backslash escapes and doubled quotes inside single quotes.
func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// rewriteAutoConf drops the recovery settings from postgresql.auto.conf
// and appends the new ones under a comment saying who wrote them.
func rewriteAutoConf(old []byte, settings []setting, standby bool, snapshot string, now time.Time) []byte {
	var out bytes.Buffer
	for line := range strings.Lines(string(old)) {
		if k := confKey(line); recoveryKeys[k] || standby && standbyKeys[k] {
			continue
		}
		out.WriteString(line)
	}
	if out.Len() > 0 && !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
		out.WriteByte('\n')
	}
	fmt.Fprintf(&out, "# Recovery settings written by tidemark restore of backup %s at %s.\n", snapshot, now.UTC().Format(time.RFC3339))
	for _, s := range settings {
		out.WriteString(s.String())
		out.WriteByte('\n')
	}
	return out.Bytes()
}

// confKey returns the setting name a postgresql.conf line sets, lower case,
// or "" for a comment or blank line.
func confKey(line string) string {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return ""
	}
	end := strings.IndexAny(line, " \t=")
	if end < 0 {
		end = len(line)
	}
	return strings.ToLower(line[:end])
}

// writeRecoveryFiles writes what turns a restored directory into an archive
// recovery from the snapshot: backup_label and tablespace_map (verbatim, or
// the map rewritten for moved tablespaces), the recovery settings and
// recovery.signal. A standby.signal from a delta target would make the
// server a standby instead: it goes. A standby restore writes it, and no
// recovery.signal.
func (w *writer) writeRecoveryFiles(s *repo.Snapshot, settings []setting, now time.Time) error {
	pgdata := w.p.roots[0]
	mode := fs.FileMode(w.p.fileMode())
	if err := writeDurable(filepath.Join(pgdata, "backup_label"), s.BackupLabel, mode, w.owner); err != nil {
		return err
	}
	tsmap := s.TablespaceMap
	if len(s.Tablespaces) > 0 {
		var ents []pg.TablespaceMapEntry
		moved := false
		for i, ts := range s.Tablespaces {
			ents = append(ents, pg.TablespaceMapEntry{OID: ts.OID, Path: w.p.roots[i+1]})
			moved = moved || w.p.roots[i+1] != ts.Path
		}
		if moved || len(tsmap) == 0 {
			tsmap = pg.EncodeTablespaceMap(ents)
		}
	}
	tsPath := filepath.Join(pgdata, "tablespace_map")
	if len(tsmap) > 0 {
		if err := writeDurable(tsPath, tsmap, mode, w.owner); err != nil {
			return err
		}
	} else if err := os.Remove(tsPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", tsPath, err)
	}
	auto := filepath.Join(pgdata, "postgresql.auto.conf")
	old, err := os.ReadFile(auto)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", auto, err)
	}
	if err := writeDurable(auto, rewriteAutoConf(old, settings, w.standby, s.ID, now), mode, w.owner); err != nil {
		return err
	}
	signal, stale := "recovery.signal", "standby.signal"
	if w.standby {
		signal, stale = stale, signal
	}
	if err := os.Remove(filepath.Join(pgdata, stale)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", stale, err)
	}
	if err := writeDurable(filepath.Join(pgdata, signal), nil, mode, w.owner); err != nil {
		return err
	}
	for _, d := range pg.RequiredEmptyDirs(w.major) {
		p := filepath.Join(pgdata, filepath.FromSlash(d))
		if err := os.MkdirAll(p, 0o700); err != nil {
			return fmt.Errorf("create directory %s: %w", p, err)
		}
		if err := syncPath(p, fs.FileMode(w.p.dirMode())|fs.ModeDir, w.owner); err != nil {
			return err
		}
	}
	return syncDir(pgdata)
}
