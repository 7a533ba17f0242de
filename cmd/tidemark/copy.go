package main

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/replicate"
	"github.com/tidemarkdb/tidemark/repo"
)

func copyCommand() *cli.Command {
	return &cli.Command{
		Name:  "copy",
		Usage: "copy snapshots and WAL the other repository lacks (repo to repo2, or back)",
		Description: "Copies, per cluster, the WAL files and then the snapshots that the target lacks, sending only the blobs it\n" +
			"does not have (both repositories share a master secret: init --repo2 URL --from-repo). Every blob is\n" +
			"verified against its ID when read and again when stored, re-encrypted to the target's keys; a snapshot\n" +
			"is committed in the target with its own id once its blobs are indexed and its WAL is there. Safe beside\n" +
			"gc and backups on either side; run it again after an interruption and it reuses what landed. WAL and\n" +
			"snapshots the target's retention expired are not copied back.",
		Flags: flagSet(repoFlags(), repo2Flags(), []cli.Flag{
			&cli.StringFlag{Name: "from", Value: firstRepo, Usage: "repository to copy from: repo or repo2", EnvVars: []string{envName("from")}},
			&cli.StringFlag{Name: "to", Usage: "repository to copy to: repo2 or repo (default: the other one)", EnvVars: []string{envName("to")}},
			stringFlag("cluster", "system identifier of the only cluster to copy (default: every cluster)"),
			&cli.StringSliceFlag{Name: "snapshot", Usage: "copy only this snapshot id (repeatable)", EnvVars: []string{envName("snapshot")}},
			&cli.BoolFlag{Name: "no-wal", Usage: "copy snapshots only (their WAL must be in the target already)", EnvVars: []string{envName("no-wal")}},
			&cli.BoolFlag{Name: "no-snapshots", Usage: "copy WAL only", EnvVars: []string{envName("no-snapshots")}},
			&cli.IntFlag{Name: "parallel", Value: 4, EnvVars: []string{envName("parallel")}, Usage: "WAL files and blob reads in flight at once"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
		}),
		Action: runCopy,
	}
}

// copyRepoOptions make an interrupted copy index what it uploaded often
// enough for the rerun to reuse most of it, as a backup does.
func copyRepoOptions(parallel int) repo.Options {
	o := backupRepoOptions(repo.DefaultPackMemory, defaultReadMemory)
	o.ReadConcurrency = max(parallel, 1)
	return o
}

func runCopy(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	from, err := repoChoice(c, "from")
	if err != nil {
		return err
	}
	if !c.IsSet("to") {
		to := secondRepo
		if from == secondRepo {
			to = firstRepo
		}
		if err := c.Set("to", to); err != nil {
			return err
		}
	}
	to, err := repoChoice(c, "to")
	if err != nil {
		return err
	}
	if from == to {
		return usageErrorf("--from and --to are both %s: copy goes from one repository to the other", from)
	}
	opts := replicate.Options{Snapshots: c.StringSlice("snapshot"), NoWAL: c.Bool("no-wal"), NoSnapshots: c.Bool("no-snapshots"),
		Parallel: c.Int("parallel"), Logger: log}
	if opts.NoWAL && opts.NoSnapshots {
		return usageErrorf("--no-wal and --no-snapshots: nothing left to copy")
	}
	if v := c.String("cluster"); v != "" {
		if opts.Cluster, err = strconv.ParseUint(v, 10, 64); err != nil || opts.Cluster == 0 {
			return usageErrorf("--cluster %q: want the system identifier, a decimal number", v)
		}
	}
	src, err := openRepoAt(c.Context, c, log, from, copyRepoOptions(opts.Parallel), 0)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := openRepoAt(c.Context, c, log, to, copyRepoOptions(opts.Parallel), 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	res, err := replicate.Run(c.Context, src, dst, opts)
	if res != nil {
		if c.Bool("json") {
			if jerr := writeJSON(c.App.Writer, "copy", copyJSON(src, dst, res)); jerr != nil && err == nil {
				err = jerr
			}
		} else {
			printCopy(c.App.Writer, src, dst, res)
		}
	}
	if err != nil {
		return fmt.Errorf("copy from %s to %s: %w (run it again to go on from here)", src.Store(), dst.Store(), err)
	}
	return nil
}

type copyResultJSON struct {
	From           string   `json:"from"`
	To             string   `json:"to"`
	Copied         []string `json:"copied"`
	Present        int      `json:"present"`
	Skipped        []string `json:"skipped,omitempty"`
	Blobs          int64    `json:"blobs"`
	RawBytes       int64    `json:"raw_bytes"`
	BlobsPresent   int64    `json:"blobs_present"`
	Packs          int64    `json:"packs"`
	PackBytes      int64    `json:"pack_bytes"`
	WALFiles       int64    `json:"wal_files"`
	WALBytes       int64    `json:"wal_bytes"`
	WALPresent     int64    `json:"wal_present"`
	WALExpired     int64    `json:"wal_expired"`
	Seconds        float64  `json:"seconds"`
	BytesPerSecond float64  `json:"bytes_per_second"`
}

func copyJSON(src, dst *repo.Repo, r *replicate.Result) copyResultJSON {
	out := copyResultJSON{From: src.Store().String(), To: dst.Store().String(), Copied: r.Copied, Present: r.Present, Skipped: r.Skipped,
		Blobs: r.Blobs, RawBytes: r.RawBytes, BlobsPresent: r.BlobsPresent, Packs: r.Packs, PackBytes: r.PackBytes,
		WALFiles: r.WALFiles, WALBytes: r.WALBytes, WALPresent: r.WALPresent, WALExpired: r.WALExpired, Seconds: r.Elapsed.Seconds()}
	if out.Copied == nil {
		out.Copied = []string{}
	}
	if s := r.Elapsed.Seconds(); s > 0 {
		out.BytesPerSecond = float64(r.RawBytes+r.WALBytes) / s
	}
	return out
}

func printCopy(w io.Writer, src, dst *repo.Repo, r *replicate.Result) {
	fmt.Fprintf(w, "copied from %s to %s in %s\n", src.Store(), dst.Store(), r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  snapshots: %d copied, %d already there", len(r.Copied), r.Present)
	if len(r.Skipped) > 0 {
		fmt.Fprintf(w, ", %d left out (the target's retention expired their WAL)", len(r.Skipped))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  blobs: %d sent (%s), %d already there; %d packs, %s stored\n",
		r.Blobs, bytesize.Format(r.RawBytes), r.BlobsPresent, r.Packs, bytesize.Format(r.PackBytes))
	fmt.Fprintf(w, "  WAL: %d files sent (%s), %d already there", r.WALFiles, bytesize.Format(r.WALBytes), r.WALPresent)
	if r.WALExpired > 0 {
		fmt.Fprintf(w, ", %d expired in the target", r.WALExpired)
	}
	fmt.Fprintln(w)
	for _, id := range r.Copied {
		fmt.Fprintf(w, "  copied %s\n", id)
	}
}
