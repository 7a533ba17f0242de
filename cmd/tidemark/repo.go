package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// openStore opens the object store named by --repo.
func openStore(c *cli.Context, log *slog.Logger) (storage.Store, error) {
	url, err := requireString(c, "repo")
	if err != nil {
		return nil, err
	}
	st, err := location.Open(c.Context, url, location.Options{Logger: log})
	if err != nil {
		return nil, usageErrorf("--repo: %v", err)
	}
	return st, nil
}

// loadIdentities reads the identities that may unlock the repository: every
// --identity file and --passphrase-file. Neither given is not an error here:
// repo.Open then says that no identity matches and what to pass.
func loadIdentities(c *cli.Context) ([]age.Identity, error) {
	var ids []age.Identity
	for _, path := range c.StringSlice("identity") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, usageErrorf("--identity: %v", err)
		}
		parsed, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil {
			return nil, usageErrorf("--identity %s: %v (want an age identity file, AGE-SECRET-KEY-1... or AGE-SECRET-KEY-PQ-1...)", path, err)
		}
		ids = append(ids, parsed...)
	}
	if path := c.String("passphrase-file"); path != "" {
		pass, err := readPassphrase(path)
		if err != nil {
			return nil, err
		}
		id, err := age.NewScryptIdentity(pass)
		if err != nil {
			return nil, usageErrorf("--passphrase-file %s: %v", path, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// readPassphrase reads a passphrase file: its first line, without the line
// ending, must not be empty.
func readPassphrase(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", usageErrorf("--passphrase-file: %v", err)
	}
	pass, _, _ := strings.Cut(string(b), "\n")
	pass = strings.TrimSuffix(pass, "\r")
	if pass == "" {
		return "", usageErrorf("--passphrase-file %s: the first line is empty", path)
	}
	return pass, nil
}

// openRepo opens and unlocks the repository for a command. The caller closes
// it.
func openRepo(c *cli.Context, log *slog.Logger, opts repo.Options) (*repo.Repo, error) {
	st, err := openStore(c, log)
	if err != nil {
		return nil, err
	}
	ids, err := loadIdentities(c)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = log
	}
	r, err := repo.Open(c.Context, st, ids, opts)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", st, err)
	}
	return r, nil
}
