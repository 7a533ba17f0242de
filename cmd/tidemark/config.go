package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// defaultConfigPath is read when neither --config nor TIDEMARK_CONFIG names a
// file. archive_command and restore_command run with PostgreSQL's environment,
// so a fixed place is what lets them stay one short line.
const defaultConfigPath = "/etc/tidemark/tidemark.conf"

// configFile is the parsed config file: values by section ("" is the global
// section, others are command names) and by flag name.
type configFile struct {
	path     string
	sections map[string]map[string]configValue
}

type configValue struct {
	value string
	line  int
}

// parseConfig reads the config file format: "name = value" lines whose names
// are long flag names, "#" comments, and "[command]" sections whose values
// apply only to that command. A value may be quoted with double quotes.
func parseConfig(path string) (*configFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cf := &configFile{path: path, sections: map[string]map[string]configValue{"": {}}}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("%s:%d: section header %q lacks a closing ]", path, n, line)
			}
			section = strings.TrimSpace(line[1 : len(line)-1])
			if cf.sections[section] == nil {
				cf.sections[section] = map[string]configValue{}
			}
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: expected \"name = value\", got %q", path, n, line)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		if _, dup := cf.sections[section][name]; dup {
			return nil, fmt.Errorf("%s:%d: %q is set twice", path, n, name)
		}
		cf.sections[section][name] = configValue{value, n}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return cf, nil
}

// loadConfig finds and parses the config file named by --config or
// TIDEMARK_CONFIG, or the default one when it exists. It returns nil when
// there is none.
func loadConfig(c *cli.Context) (*configFile, error) {
	path := c.String("config")
	explicit := path != ""
	if !explicit {
		path = defaultConfigPath
	}
	cf, err := parseConfig(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, usageErrorf("config file: %v", err)
	}
	return cf, nil
}

// applyConfig fills every flag of the running command that was set neither on
// the command line nor in the environment from the config file: the global
// section first, then the command's own section, which wins. A name in the
// command's section that is not one of its flags is an error (a typo would
// otherwise be silently ignored); global names must be a flag of some command.
func applyConfig(c *cli.Context, cf *configFile, section string, known map[string]bool) error {
	if cf == nil {
		return nil
	}
	own := map[string]bool{}
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			own[n] = true
		}
	}
	for name, v := range cf.sections[""] {
		if !known[name] {
			return usageErrorf("config file %s:%d: unknown setting %q", cf.path, v.line, name)
		}
	}
	if section != "" {
		for name, v := range cf.sections[section] {
			if !own[name] {
				return usageErrorf("config file %s:%d: command %q has no setting %q", cf.path, v.line, section, name)
			}
		}
	}
	for s := range cf.sections {
		if s != "" && !known["["+s+"]"] {
			return usageErrorf("config file %s: unknown section [%s]", cf.path, s)
		}
	}
	values := map[string]configValue{}
	for name, v := range cf.sections[""] {
		values[name] = v
	}
	for name, v := range cf.sections[section] {
		values[name] = v
	}
	for name, v := range values {
		if !own[name] || c.IsSet(name) {
			continue
		}
		if err := c.Set(name, v.value); err != nil {
			return usageErrorf("config file %s:%d: %s: %v", cf.path, v.line, name, err)
		}
	}
	return nil
}
