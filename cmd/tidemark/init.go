package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
)

func initCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "create a repository",
		Description: "Writes the config object (create-only: a second init on the same URL fails), a random master\n" +
			"secret and one key file for the first recipient: --recipient (an age public key, age1... or age1pq1..., or an\n" +
			"age plugin recipient, age1<plugin>1..., which runs the program age-plugin-<plugin>),\n" +
			"--passphrase-file, or, when neither is given, a newly generated age identity written to --identity-out\n" +
			"(mode 0600). Losing every key loses the backups.\n\n" +
			"--lock-days N makes a locked repository (s3:// only, in a bucket created with S3 Object Lock): every\n" +
			"pack, index object, snapshot, WAL object, key file and the config is written so that nobody, not even\n" +
			"with these credentials, can delete or overwrite it for N days (--lock-mode compliance; governance lets\n" +
			"principals with s3:BypassGovernanceRetention remove it). Expire and gc delete an object only after its\n" +
			"lock has passed. The setting is permanent for the repository.\n\n" +
			"With --from-repo it creates the second repository at --repo2 instead: it shares the master secret of the\n" +
			"repository at --repo (unlocked with --identity or --passphrase-file), so that blob IDs and WAL MACs agree\n" +
			"and tidemark copy sends only what is missing, but has its own id, key files and repository identity. Its\n" +
			"first key is --recipient, else --repo2-passphrase-file, else the first --repo2-identity, else the same\n" +
			"passphrase or identity as the first repository's.",
		Flags: []cli.Flag{
			stringFlag("repo", "repository URL: file:///path, s3://bucket/prefix?endpoint=...&region=..., azure://container/prefix?account=... or gs://bucket/prefix"),
			&cli.BoolFlag{Name: "from-repo", Usage: "create the second repository (--repo2) from the one at --repo: same master secret, own keys", EnvVars: []string{envName("from-repo")}},
			&cli.StringSliceFlag{Name: "identity", Usage: "with --from-repo: age identity file that unlocks --repo (repeatable)", EnvVars: []string{envName("identity")}},
			stringFlag("recipient", "age public key (age1... or age1pq1...) or age plugin recipient (age1<plugin>1...) that receives the first key"),
			stringFlag("passphrase-file", "file whose first line is the passphrase of the first key"),
			stringFlag("identity-out", "where to write the generated identity when neither --recipient nor --passphrase-file is given (default "+defaultIdentityOut+")"),
			&cli.StringSliceFlag{Name: "escrow-recipient", Usage: "age public key every object is also encrypted to, for decryption with the age CLI (repeatable)", EnvVars: []string{envName("escrow-recipient")}},
			stringFlag("label", "label of the first key, shown by key list"),
			&cli.StringFlag{Name: "pack-size", Usage: "target pack size (bytes, or with a unit: 32MiB)", Value: strconv.Itoa(repo.DefaultPackSize>>20) + "MiB", EnvVars: []string{envName("pack-size")}},
			&cli.IntFlag{Name: "compression-level", Usage: "zstd level: 1 fastest, 2 zstd's default, 3 better, 4 best", Value: repo.DefaultCompressionLevel, EnvVars: []string{envName("compression-level")}},
			&cli.IntFlag{Name: "lock-days", Usage: "lock every immutable object against deletion and overwrite for this many days (S3 Object Lock); 0: no lock", EnvVars: []string{envName("lock-days")}},
			&cli.StringFlag{Name: "lock-mode", Usage: "object lock mode: compliance (nobody can remove a lock) or governance (principals with s3:BypassGovernanceRetention can)", Value: "compliance", EnvVars: []string{envName("lock-mode")}},
			repo2Flags()[0], repo2Flags()[1], repo2Flags()[2],
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
		},
		Action: runInit,
	}
}

// lockOption reads --lock-days and --lock-mode: nil for no lock.
// initOptions are the settings of a new repository that init and init
// --from-repo both take from their flags.
func initOptions(c *cli.Context, log *slog.Logger, spec repo.KeySpec, packSize int64, lock *repo.Lock) repo.InitOptions {
	return repo.InitOptions{
		Options:          repo.Options{Logger: log},
		Key:              spec,
		EscrowRecipients: c.StringSlice("escrow-recipient"),
		PackSize:         packSize,
		CompressionLevel: c.Int("compression-level"),
		Lock:             lock,
	}
}

func lockOption(c *cli.Context) (*repo.Lock, error) {
	switch days, mode := c.Int("lock-days"), c.String("lock-mode"); {
	case days < 0 || days > 36500:
		return nil, usageErrorf("--lock-days %d: give a number of days from 1 to 36500, or 0 for no lock", days)
	case mode != storage.RetentionCompliance && mode != storage.RetentionGovernance:
		return nil, usageErrorf("--lock-mode %q: use compliance or governance", mode)
	case days > 0:
		return &repo.Lock{Mode: mode, PeriodSeconds: int64(days) * 86400}, nil
	}
	return nil, nil
}

// defaultIdentityOut is where init writes a generated identity, relative to
// the home directory.
const defaultIdentityOut = "~/.config/tidemark/identity.txt"

func expandHome(p string) (string, error) {
	if len(p) >= 2 && p[:2] == "~/" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		return filepath.Join(home, p[2:]), nil
	}
	return p, nil
}

func runInit(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if c.Bool("from-repo") {
		return runInitSecond(c, log)
	}
	rcpt, pass := c.String("recipient"), c.String("passphrase-file")
	if rcpt != "" && pass != "" {
		return usageErrorf("give either --recipient or --passphrase-file, not both")
	}
	packSize, err := bytesize.Parse(c.String("pack-size"))
	if err != nil {
		return usageErrorf("--pack-size: %v", err)
	}
	lock, err := lockOption(c)
	if err != nil {
		return err
	}
	label := c.String("label")
	var spec repo.KeySpec
	var idPath string
	var generated *age.HybridIdentity
	switch {
	case rcpt != "":
		if spec, err = recipientKey(c, rcpt, label); err != nil {
			return usageErrorf("--recipient: %v", err)
		}
	case pass != "":
		p, err := readPassphrase(pass)
		if err != nil {
			return err
		}
		if spec, err = repo.PassphraseKey(p, label, 0); err != nil {
			return usageErrorf("--passphrase-file: %v", err)
		}
	default:
		// Check the repository first, so that a second init does not leave
		// a fresh identity file behind.
		if idPath, err = expandHome(c.String("identity-out")); err != nil {
			return usageErrorf("--identity-out: %v", err)
		}
		if idPath == "" {
			idPath, _ = expandHome(defaultIdentityOut)
		}
		if generated, err = age.GenerateHybridIdentity(); err != nil {
			return err
		}
		if spec, err = repo.ParseRecipient(generated.Recipient().String(), label); err != nil {
			return err
		}
	}
	st, err := openStore(c, log)
	if err != nil {
		return err
	}
	if generated != nil {
		if err := writeIdentityFile(idPath, generated); err != nil {
			return err
		}
	}
	r, res, err := repo.Init(c.Context, st, initOptions(c, log, spec, packSize, lock))
	if err != nil {
		if generated != nil {
			os.Remove(idPath) // it unlocks nothing
		}
		var ee *repo.ExistsError
		if errors.As(err, &ee) {
			return err
		}
		return fmt.Errorf("init %s: %w", st, err)
	}
	defer r.Close()
	if c.Bool("json") {
		// stdout is the JSON alone; the warning about the only key goes
		// to stderr, where a person still sees it.
		if generated != nil {
			printIdentityWarning(c.App.ErrWriter, idPath, generated.Recipient().String())
		}
		j := initJSON{RepositoryID: res.Config.ID, Repository: st.String(), KeyID: res.KeyID, KeyType: spec.Type, Warnings: res.Warnings}
		if generated != nil {
			j.IdentityFile, j.Recipient = idPath, generated.Recipient().String()
		}
		return writeJSON(c.App.Writer, "init", j)
	}
	out := c.App.Writer
	fmt.Fprintf(out, "created repository %s at %s\n", res.Config.ID, st)
	fmt.Fprintf(out, "key %s (%s)\n", res.KeyID, spec.Type)
	if lock != nil {
		fmt.Fprintf(out, "object lock: %s mode, %d days: every immutable object stays undeletable for %d days after it is written\n",
			lock.Mode, lock.PeriodSeconds/86400, lock.PeriodSeconds/86400)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(c.App.ErrWriter, "warning: %s\n", w)
	}
	if generated != nil {
		printIdentityWarning(out, idPath, generated.Recipient().String())
	}
	return nil
}

// initJSON is init --json's output.
type initJSON struct {
	RepositoryID string `json:"repository_id"`
	Repository   string `json:"repository"`
	KeyID        string `json:"key_id"`
	KeyType      string `json:"key_type"`
	IdentityFile string `json:"identity_file,omitempty"` // a generated identity
	Recipient    string `json:"recipient,omitempty"`     // its public key
	// SecondOf is the repository whose master secret it shares
	// (init --from-repo).
	SecondOf string   `json:"second_of,omitempty"`
	Warnings []string `json:"warnings"`
}

// writeIdentityFile writes an age identity file with mode 0600, refusing to
// overwrite one.
func writeIdentityFile(path string, id *age.HybridIdentity) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write identity %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return usageErrorf("--identity-out %s already exists; refusing to overwrite an identity (choose another path)", path)
		}
		return fmt.Errorf("write identity %s: %w", path, err)
	}
	_, err = fmt.Fprintf(f, "# tidemark repository identity, created %s\n# public key: %s\n%s\n",
		time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write identity %s: %w", path, err)
	}
	return nil
}

func printIdentityWarning(w io.Writer, path, recipient string) {
	fmt.Fprintf(w, "\n"+
		"!!! The only key to this repository is the identity file\n"+
		"!!!     %s\n"+
		"!!! (public key %s).\n"+
		"!!! LOSING IT LOSES THE BACKUPS: nobody can decrypt them without it.\n"+
		"!!! Copy it somewhere safe now (a password manager, another machine), or add a second key:\n"+
		"!!!     tidemark key add --repo ... --identity %s --recipient age1...\n\n",
		path, recipient, path)
}

// runInitSecond is init --from-repo: the second repository at --repo2,
// sharing the master secret of the one at --repo.
func runInitSecond(c *cli.Context, log *slog.Logger) error {
	if _, err := requireString(c, secondRepo); err != nil {
		return err
	}
	packSize, err := bytesize.Parse(c.String("pack-size"))
	if err != nil {
		return usageErrorf("--pack-size: %v", err)
	}
	lock, err := lockOption(c)
	if err != nil {
		return err
	}
	first, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer first.Close()
	spec, err := secondKey(c)
	if err != nil {
		return err
	}
	st, err := openStoreAt(c.Context, c, log, secondRepo, 0)
	if err != nil {
		return err
	}
	opts := initOptions(c, log, spec, packSize, lock)
	opts.ShareSecretOf = first
	r, res, err := repo.Init(c.Context, st, opts)
	if err != nil {
		var ee *repo.ExistsError
		if errors.As(err, &ee) {
			return err
		}
		return fmt.Errorf("init %s: %w", st, err)
	}
	defer r.Close()
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "init", initJSON{RepositoryID: res.Config.ID, Repository: st.String(), KeyID: res.KeyID, KeyType: spec.Type,
			SecondOf: first.Config().ID, Warnings: res.Warnings})
	}
	out := c.App.Writer
	fmt.Fprintf(out, "created repository %s at %s, the second repository of %s (%s)\n", res.Config.ID, st, first.Config().ID, first.Store())
	fmt.Fprintf(out, "key %s (%s)\n", res.KeyID, spec.Type)
	for _, w := range res.Warnings {
		fmt.Fprintf(c.App.ErrWriter, "warning: %s\n", w)
	}
	fmt.Fprintf(out, "next: set repo2 = %s in the config, then run tidemark copy to bring the existing backups and WAL over\n", c.String(secondRepo))
	return nil
}

// secondKey is the first key of a second repository: --recipient, else
// --repo2-passphrase-file, else the first --repo2-identity, else the
// first repository's passphrase or first identity (repo2's keys default to
// repo's).
func secondKey(c *cli.Context) (repo.KeySpec, error) {
	label := c.String("label")
	if r := c.String("recipient"); r != "" {
		spec, err := recipientKey(c, r, label)
		if err != nil {
			return spec, usageErrorf("--recipient: %v", err)
		}
		return spec, nil
	}
	for _, prefix := range []string{"repo2-", ""} {
		if path := c.String(prefix + "passphrase-file"); path != "" {
			p, err := readPassphrase(path)
			if err != nil {
				return repo.KeySpec{}, err
			}
			return repo.PassphraseKey(p, label, 0)
		}
		for _, path := range c.StringSlice(prefix + "identity") {
			b, err := os.ReadFile(path)
			if err != nil {
				return repo.KeySpec{}, usageErrorf("--%sidentity: %v", prefix, err)
			}
			// A plugin identity does not say its recipient: only a native
			// one can stand in for --recipient.
			ids, _, err := parseIdentityFile(b, ageUI(c))
			if err != nil {
				return repo.KeySpec{}, usageErrorf("--%sidentity %s: %v", prefix, path, err)
			}
			for _, id := range ids {
				var pub string
				switch id := id.(type) {
				case *age.X25519Identity:
					pub = id.Recipient().String()
				case *age.HybridIdentity:
					pub = id.Recipient().String()
				default:
					continue
				}
				return repo.ParseRecipient(pub, label)
			}
		}
	}
	return repo.KeySpec{}, usageErrorf("no key for the second repository: give --recipient, --repo2-passphrase-file or --repo2-identity")
}
