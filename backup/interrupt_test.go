package backup

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// countObjects returns how many objects lie under prefix.
func countObjects(t *testing.T, st storage.Store, prefix string) int {
	t.Helper()
	n := 0
	for _, err := range st.List(context.WithoutCancel(t.Context()), prefix, "") {
		if err != nil {
			return n
		}
		n++
	}
	return n
}

// runAsync runs a backup in the background.
func runAsync(t *testing.T, r *testRepo, opts Options) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := Run(t.Context(), r.Repo, opts)
		done <- err
	}()
	return done
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestS3OutageResumes: MinIO goes away in the middle of a backup. The
// backup fails once its retries run out and commits nothing; with MinIO
// back, the next backup reuses what the first uploaded and indexed.
func TestS3OutageResumes(t *testing.T) {
	srv := testenv.MinIO(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	c, a := newCluster(t, 15, nil)
	testenv.LoadRandomTable(t, c, "big", 300000)
	// testenv reports MinIO ready a moment before it stops answering 503
	// "server not initialized" on a loaded machine.
	waitUntil(t, "MinIO", func() bool {
		_, err := srv.Client().ListBuckets(t.Context(), &s3.ListBucketsInput{})
		return err == nil
	})
	st, err := location.Open(t.Context(), srv.URL(srv.NewBucket(t), "repo"), location.Options{RetryFor: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := initTestRepo(t, st, "", 256<<10)
	opts := backupOpts(t, c, a)
	opts.MaxReadRate = 8 << 20
	done := runAsync(t, r, opts)
	// An index delta every two packs (of 256 KiB), about 14 MiB in all:
	// stop MinIO once about half is uploaded.
	var uploaded int64
	waitUntil(t, "uploads", func() bool {
		uploaded = 0
		for oi, err := range st.List(t.Context(), "data/", "") {
			if err != nil {
				return false
			}
			uploaded += oi.Size
		}
		return uploaded >= 6<<20
	})
	srv.Stop()
	err = <-done
	if err == nil {
		t.Fatal("the backup succeeded without its object store")
	}
	t.Logf("backup during the outage: %v", err)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if n := countObjects(t, st, "snapshots/"); n != 0 {
		t.Fatalf("%d snapshots after the outage", n)
	}
	// The failed run could not remove its lease while MinIO was down. A
	// new tidemark process removes a lease whose process is gone; this
	// test runs both backups in one process, so it removes it itself.
	for oi, err := range st.List(t.Context(), "leases/", "") {
		if err != nil {
			t.Fatal(err)
		}
		st.Delete(t.Context(), oi.Key)
	}
	opts.MaxReadRate = 0
	res := mustBackup(t, r, opts)
	t.Logf("%d bytes of packs uploaded before the outage; the resumed backup stored %d and re-checked %d reused packs",
		uploaded, res.Stats.NewBytes, res.Stats.ReusedPacks)
	if res.Stats.ReusedPacks == 0 || res.Stats.NewBytes >= uploaded {
		t.Fatalf("the resumed backup reused %d packs and stored %d bytes after %d were uploaded", res.Stats.ReusedPacks, res.Stats.NewBytes, uploaded)
	}
}

// TestLostConnection: the backup's session is terminated in the middle of
// the copy. PostgreSQL ends the backup; tidemark fails and commits nothing,
// and the next backup succeeds.
func TestLostConnection(t *testing.T) {
	c, a := newCluster(t, 17, nil)
	testenv.LoadRandomTable(t, c, "big", 200000)
	r := newTestRepo(t, 256<<10)
	opts := backupOpts(t, c, a)
	opts.MaxReadRate = 4 << 20
	done := runAsync(t, r, opts)
	waitUntil(t, "the backup to start copying", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tidemark backup'") == "1" &&
			countObjects(t, r.store, "data/") > 0
	})
	c.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tidemark backup'")
	err := <-done
	if err == nil {
		t.Fatal("the backup succeeded without its session")
	}
	t.Logf("backup without its session: %v", err)
	if n := countObjects(t, r.store, "snapshots/"); n != 0 {
		t.Fatalf("%d snapshots", n)
	}
	opts.MaxReadRate = 0
	mustBackup(t, r, opts)
}
