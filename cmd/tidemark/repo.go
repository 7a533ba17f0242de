package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/plugin"
	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/keys"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
	"github.com/tidemarkdb/tidemark/storage/ratelimit"
)

// The two repositories a command may know of: repo, and repo2, a second
// repository in another region or provider (docs/operations.md, "A second
// region"). repo2 has flags of its own for its URL and keys; its keys
// default to repo's.
const (
	firstRepo  = "repo"
	secondRepo = "repo2"
)

// repoChoice reads a flag that names one of the two repositories (backup
// --to, copy --from and --to).
func repoChoice(c *cli.Context, flag string) (string, error) {
	switch v := c.String(flag); v {
	case firstRepo, secondRepo:
		if c.String(v) == "" {
			return "", usageErrorf("--%s %s: no %s is configured (--%s, %s, or %q in the config file)", flag, v, v, v, envName(v), v)
		}
		return v, nil
	default:
		return "", usageErrorf("--%s %q: want repo or repo2", flag, v)
	}
}

// openStore opens the object store named by --repo.
func openStore(c *cli.Context, log *slog.Logger) (storage.Store, error) {
	return openStoreAt(c.Context, c, log, firstRepo, 0)
}

// openStoreAt opens the object store of repository which (firstRepo or
// secondRepo), retrying one operation for up to retryFor (0: the
// default). repo2's storage credentials may differ from repo's: a variable
// TIDEMARK_REPO2_<NAME> (TIDEMARK_REPO2_AWS_ACCESS_KEY_ID, ...) stands in
// for <NAME> when it is set.
func openStoreAt(ctx context.Context, c *cli.Context, log *slog.Logger, which string, retryFor time.Duration) (storage.Store, error) {
	url, err := requireString(c, which)
	if err != nil {
		return nil, err
	}
	// --max-upload-rate and --max-download-rate, on the commands that
	// have them, limit each repository's store.
	rates, err := parseRates(c)
	if err != nil {
		return nil, err
	}
	opts := location.Options{Logger: log, RetryFor: retryFor}
	if which == secondRepo {
		opts.Getenv = func(k string) string {
			if v, ok := os.LookupEnv("TIDEMARK_REPO2_" + k); ok {
				return v
			}
			return os.Getenv(k)
		}
	}
	st, err := location.Open(ctx, url, opts)
	if err != nil {
		return nil, usageErrorf("--%s: %v", which, err)
	}
	return ratelimit.New(st, rates[0], rates[1]), nil
}

// parseRates reads --max-upload-rate and --max-download-rate (0: no
// limit; a command without them has neither). Every command checks them
// before its work (prepare), so that a bad value in archive_command is an
// error at the first push even while the agent does the uploads.
func parseRates(c *cli.Context) (rates [2]int64, err error) {
	for i, name := range []string{"max-upload-rate", "max-download-rate"} {
		if v := c.String(name); v != "" {
			if rates[i], err = bytesize.Parse(v); err != nil || rates[i] <= 0 {
				return rates, usageErrorf("--%s %q: want bytes per second, e.g. 20MiB (units are powers of 1024)", name, v)
			}
		}
	}
	return rates, nil
}

// rateFlags limit the bandwidth to the object store.
func rateFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("max-upload-rate", "upload at most this many bytes per second to the repository, over all uploads at once (e.g. 20MiB)"),
		stringFlag("max-download-rate", "download at most this many bytes per second from the repository, over all downloads at once (e.g. 50MiB)"),
	}
}

// loadIdentitiesOf reads the identities that may unlock repository which:
// every --identity file and --passphrase-file, and for repo2
// --repo2-identity and --repo2-passphrase-file, or repo's when neither is
// given. None is not an error here: repo.Open then says that no identity
// matches and what to pass.
func loadIdentitiesOf(c *cli.Context, which string) ([]age.Identity, error) {
	prefix := ""
	if which == secondRepo && (len(c.StringSlice("repo2-identity")) > 0 || c.String("repo2-passphrase-file") != "") {
		prefix = "repo2-"
	}
	var ids, plugins []age.Identity
	for _, path := range c.StringSlice(prefix + "identity") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, usageErrorf("--%sidentity: %v", prefix, err)
		}
		native, plug, err := parseIdentityFile(b, ageUI(c))
		if err != nil {
			return nil, usageErrorf("--%sidentity %s: %v (want an age identity file: AGE-SECRET-KEY-1..., AGE-SECRET-KEY-PQ-1... or AGE-PLUGIN-...)", prefix, path, err)
		}
		ids = append(ids, native...)
		plugins = append(plugins, plug...)
	}
	if path := c.String(prefix + "passphrase-file"); path != "" {
		pass, err := readPassphrase(path)
		if err != nil {
			return nil, err
		}
		id, err := age.NewScryptIdentity(pass)
		if err != nil {
			return nil, usageErrorf("--%spassphrase-file %s: %v", prefix, path, err)
		}
		ids = append(ids, id)
	}
	// Native identities first: age stops at an identity that fails (a
	// plugin whose program is missing) rather than trying the next.
	return append(ids, plugins...), nil
}

// parseIdentityFile parses an age identity file: native identities, and age
// plugin identities (AGE-PLUGIN-<NAME>-1..., one per line), whose plugin
// program talks to the user through ui.
func parseIdentityFile(b []byte, ui *plugin.ClientUI) (native, plugins []age.Identity, err error) {
	var rest bytes.Buffer
	hasNative := false
	for _, line := range strings.Split(string(b), "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "AGE-PLUGIN-") {
			id, err := plugin.NewIdentity(l, ui)
			if err != nil {
				return nil, nil, err
			}
			plugins = append(plugins, id)
			continue
		}
		if l != "" && !strings.HasPrefix(l, "#") {
			hasNative = true
		}
		rest.WriteString(line + "\n")
	}
	if hasNative || len(plugins) == 0 {
		if native, err = age.ParseIdentities(&rest); err != nil {
			return nil, nil, err
		}
	}
	return native, plugins, nil
}

// ageUI is how an age plugin talks to the user: messages on stderr, PINs
// and confirmations read from the terminal (a plugin that needs them fails
// where there is none, as under archive_command).
func ageUI(c *cli.Context) *plugin.ClientUI {
	w := c.App.ErrWriter
	return plugin.NewTerminalUI(func(format string, args ...any) {
		fmt.Fprintf(w, format+"\n", args...)
	}, func(format string, args ...any) {
		fmt.Fprintf(w, "warning: "+format+"\n", args...)
	})
}

// recipientKey makes the KeySpec of --recipient: a native age public key or
// an age plugin recipient.
func recipientKey(c *cli.Context, s, label string) (repo.KeySpec, error) {
	if keys.IsPluginRecipient(s) {
		return repo.PluginRecipient(s, label, ageUI(c))
	}
	return repo.ParseRecipient(s, label)
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
	return openRepoAt(c.Context, c, log, firstRepo, opts, 0)
}

// openRepoAt opens and unlocks repository which (firstRepo or secondRepo)
// with the given retry bound (0: the default). The caller closes it.
func openRepoAt(ctx context.Context, c *cli.Context, log *slog.Logger, which string, opts repo.Options, retryFor time.Duration) (*repo.Repo, error) {
	st, err := openStoreAt(ctx, c, log, which, retryFor)
	if err != nil {
		return nil, err
	}
	ids, err := loadIdentitiesOf(c, which)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = log
	}
	if opts.IndexMemory, err = indexMemory(c); err != nil {
		return nil, err
	}
	if opts.OnIndexMemory == nil {
		opts.OnIndexMemory = procLimit.indexReporter()
	}
	r, err := repo.Open(ctx, st, ids, opts)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", st, err)
	}
	return r, nil
}

// indexMemory parses --index-memory (0, the default, when the command has
// no such flag).
func indexMemory(c *cli.Context) (int64, error) {
	v := c.String("index-memory")
	if v == "" {
		return 0, nil
	}
	n, err := bytesize.Parse(v)
	if err != nil || n < 1<<20 {
		return 0, usageErrorf("--index-memory %q: want a size of at least 1MiB, such as 13MiB", v)
	}
	return n, nil
}

// openSecondOf opens repo2 and checks that it is a second repository of
// first (it shares the master secret), so that blob IDs and WAL MACs agree.
func openSecondOf(ctx context.Context, c *cli.Context, log *slog.Logger, first *repo.Repo, opts repo.Options, retryFor time.Duration) (*repo.Repo, error) {
	r2, err := openRepoAt(ctx, c, log, secondRepo, opts, retryFor)
	if err != nil {
		return nil, err
	}
	if err := first.CheckSharedSecret(r2); err != nil {
		r2.Close()
		return nil, err
	}
	return r2, nil
}

// openFailover opens repo for a reader (restore, drill) that falls back to
// repo2, when one is configured, once repo is unreachable: right away if
// repo cannot even be opened for that reason, else the first time a read
// finds it so. retryFor bounds the retries of one operation on repo before
// that happens. The caller closes the result.
func openFailover(c *cli.Context, log *slog.Logger, opts repo.Options, retryFor time.Duration) (*repo.Failover, error) {
	first, err := openRepoAt(c.Context, c, log, firstRepo, opts, retryFor)
	if c.String(secondRepo) == "" {
		if err != nil {
			return nil, err
		}
		return repo.NewFailover(first, nil, log), nil
	}
	if err != nil {
		if !storage.IsUnavailable(err) || c.Context.Err() != nil {
			return nil, err
		}
		log.Warn("repository unreachable: using the second repository", "first", c.String(firstRepo), "err", err)
		second, err2 := openRepoAt(c.Context, c, log, secondRepo, opts, 0)
		if err2 != nil {
			return nil, fmt.Errorf("%w; the second repository: %v", err, err2)
		}
		return repo.FailoverTo(second, err, log), nil
	}
	return repo.NewFailover(first, func(ctx context.Context) (*repo.Repo, error) {
		return openRepoAt(ctx, c, log, secondRepo, opts, 0)
	}, log), nil
}
