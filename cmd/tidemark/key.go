package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/keys"
)

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "grant, list and revoke access to the repository",
		Description: "Each key file holds the repository's master secret encrypted to one recipient. Adding or removing\n" +
			"one never rewrites data; removing the last key is refused.",
		Subcommands: []*cli.Command{
			{
				Name:  "add",
				Usage: "add a key: --recipient age1..., --new-passphrase-file F, or a generated identity (--identity-out)",
				Flags: flagSet(repoFlags(), []cli.Flag{
					stringFlag("recipient", "age public key (age1... or age1pq1...) or age plugin recipient (age1<plugin>1...) to grant access to"),
					stringFlag("new-passphrase-file", "file whose first line is the passphrase of the new key"),
					stringFlag("identity-out", "write a newly generated identity here (mode 0600) and grant it access"),
					stringFlag("label", "label of the new key, shown by key list"),
					&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
				}),
				Action: runKeyAdd,
			},
			{
				Name:   "list",
				Usage:  "list the keys (no secret is decrypted beyond opening the repository)",
				Flags:  flagSet(repoFlags(), []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{envName("json")}}}),
				Action: runKeyList,
			},
			{
				Name:      "remove",
				Usage:     "revoke a key by id (or a unique prefix of at least 4 digits)",
				ArgsUsage: "KEY-ID",
				Flags:     flagSet(repoFlags(), []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}}}),
				Action:    runKeyRemove,
			},
		},
	}
}

func runKeyAdd(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	rcpt, pass, out := c.String("recipient"), c.String("new-passphrase-file"), c.String("identity-out")
	n := 0
	for _, s := range []string{rcpt, pass, out} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return usageErrorf("key add: give exactly one of --recipient, --new-passphrase-file, --identity-out")
	}
	label := c.String("label")
	var spec repo.KeySpec
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
			return usageErrorf("--new-passphrase-file: %v", err)
		}
	default:
		if out, err = expandHome(out); err != nil {
			return usageErrorf("--identity-out: %v", err)
		}
		if generated, err = age.GenerateHybridIdentity(); err != nil {
			return err
		}
		if spec, err = repo.ParseRecipient(generated.Recipient().String(), label); err != nil {
			return err
		}
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	if generated != nil {
		if err := writeIdentityFile(out, generated); err != nil {
			return err
		}
	}
	env, err := r.AddKey(c.Context, spec)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		j := keyAddJSON{ID: env.ID, RecipientType: env.RecipientType}
		if generated != nil {
			j.IdentityFile = out
		}
		return writeJSON(c.App.Writer, "key", j)
	}
	fmt.Fprintf(c.App.Writer, "added key %s (%s)\n", env.ID, env.RecipientType)
	if generated != nil {
		fmt.Fprintf(c.App.Writer, "its identity is in %s (mode 0600): keep it safe\n", out)
	}
	return nil
}

// keyAddJSON is key add --json's output.
type keyAddJSON struct {
	ID            string `json:"id"`
	RecipientType string `json:"recipient_type"`
	IdentityFile  string `json:"identity_file,omitempty"` // a generated identity
}

// keyRemoveJSON is key remove --json's output.
type keyRemoveJSON struct {
	ID      string `json:"id"`
	Current bool   `json:"was_current"` // the key that opened the repository
}

// keyJSON is one line of key list --json.
type keyJSON struct {
	ID            string    `json:"id"`
	Created       time.Time `json:"created"`
	Label         string    `json:"label,omitempty"`
	Host          string    `json:"host,omitempty"`
	RecipientType string    `json:"recipient_type"`
	Recipient     string    `json:"recipient,omitempty"`
	Current       bool      `json:"current"`
	Error         string    `json:"error,omitempty"`
}

func runKeyList(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	list, err := r.ListKeys(c.Context)
	if err != nil {
		return err
	}
	var rows []keyJSON
	for _, k := range list {
		row := keyJSON{ID: k.ID, Created: k.Created, Label: k.Label, Host: k.Host,
			RecipientType: k.RecipientType, Recipient: k.Recipient, Current: k.Current}
		if k.Err != nil {
			row.Error = k.Err.Error()
		}
		rows = append(rows, row)
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "keys", rows)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tCREATED\tHOST\tLABEL\tRECIPIENT")
	for _, k := range rows {
		id := k.ID
		if k.Current {
			id += "*"
		}
		rc := k.Recipient
		if k.RecipientType == keys.TypeScrypt {
			rc = "(passphrase)"
		}
		if k.Error != "" {
			rc = "unreadable: " + k.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", id, k.RecipientType, k.Created.Format(time.RFC3339), k.Host, k.Label, rc)
	}
	fmt.Fprintln(tw, "(* the key that opened the repository)")
	return tw.Flush()
}

func runKeyRemove(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if c.NArg() != 1 {
		return usageErrorf("key remove: give one KEY-ID (see tidemark key list)")
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	id, err := r.RemoveKey(c.Context, c.Args().First())
	if err != nil {
		return err
	}
	current := id == r.KeyID()
	if current {
		fmt.Fprintln(c.App.ErrWriter, "warning: that was the key you opened the repository with; use another one from now on")
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "removed_key", keyRemoveJSON{ID: id, Current: current})
	}
	fmt.Fprintf(c.App.Writer, "removed key %s\n", id)
	return nil
}
