package wal

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// second is a second repository made from e's, in a store that can fail.
type second struct {
	store *fault.Store
	arch  *walarchive.Archive
	opens atomic.Int64
	// refuse fails the next opens while set.
	refuse atomic.Bool
}

func newSecond(t *testing.T, e *env) *second {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "second")
	if err != nil {
		t.Fatal(err)
	}
	s := &second{store: fault.New(mem.New())}
	r, _, err := repo.Init(context.Background(), s.store, repo.InitOptions{Key: spec, ShareSecretOf: e.repo})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	s.arch = walarchive.FromRepo(r, walarchive.Options{})
	return s
}

func (s *second) open(context.Context) (*walarchive.Archive, error) {
	s.opens.Add(1)
	if s.refuse.Load() {
		return nil, &storage.Error{Op: "get", Key: "config", Err: errors.New("connection refused"), Transient: true}
	}
	return s.arch, nil
}

// TestPushSecond: with a second repository, a push succeeds only once both
// have the file; while the second is down (or cannot even be opened) it
// fails with a storage error naming the second, the first keeps what it
// got, and the push succeeds once the second is back.
func TestPushSecond(t *testing.T) {
	e := newEnv(t)
	s := newSecond(t, e)
	ctx := context.Background()
	p := NewPusher(e.arch, cluster, nil).WithSecond(s.store.String(), s.open)

	name := segName(1, 5)
	e.ready(t, name, segment(1, 5, 1))
	path := filepath.Join(e.pgdata, "pg_wal", name)

	s.refuse.Store(true)
	_, err := p.Push(ctx, path)
	if !storage.IsUnavailable(err) {
		t.Fatalf("push while the second cannot be opened: %v, want a storage failure", err)
	}
	e.archived(t, name) // the first has it
	s.refuse.Store(false)

	s.store.Down()
	res, err := p.Push(ctx, path)
	if !storage.IsUnavailable(err) || res.Targets[0].Err != nil || res.Targets[1].Err == nil {
		t.Fatalf("push while the second is down: %v (%+v)", err, res.Targets)
	}
	s.store.Up()
	res, err = p.Push(ctx, path)
	if err != nil || res.Targets[0].Created || !res.Targets[1].Created {
		t.Fatalf("push after the second came back: %v (%+v): want the second created, the first already there", err, res.Targets)
	}
	if _, _, err := s.arch.ReadFile(ctx, sys, name); err != nil {
		t.Fatal(err)
	}
}

// TestAgentSecond: the agent archives into both in parallel; while the
// second is down the first keeps up, a push request is refused with a
// storage failure (PostgreSQL retries), and the second's lag counts the
// files it lacks; once back, it catches up and the lag is gone.
func TestAgentSecond(t *testing.T) {
	e := newEnv(t)
	s := newSecond(t, e)
	s.store.Down()
	p := NewPusher(e.arch, cluster, nil).WithSecond(s.store.String(), s.open)
	a, stop := runAgentWith(t, e, p, AgentOptions{Parallel: 2, MaxBackoff: 20 * time.Millisecond})
	defer stop()
	var names []string
	for i := pg.SegNo(1); i <= 4; i++ {
		names = append(names, segName(1, i))
		e.ready(t, segName(1, i), segment(1, i, uint64(i)))
	}
	waitFor(t, "the first repository to have every file", func() bool {
		l := a.Lag()
		return l[0].Files == 0 && l[1].Files == len(names)
	})
	for _, n := range names {
		e.archived(t, n)
	}
	_, err := push(t, a, e, names[0])
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Kind != KindStorage || !ae.Definitive() {
		t.Fatalf("push while the second is down: %v, want a definitive storage failure", err)
	}
	s.store.Up()
	waitFor(t, "the second to catch up", func() bool { return a.Lag()[1].Files == 0 })
	for _, n := range names {
		if resp, err := push(t, a, e, n); err != nil || !resp.OK {
			t.Fatalf("push %s: %+v %v", n, resp, err)
		}
		if _, _, err := s.arch.ReadFile(context.Background(), sys, n); err != nil {
			t.Fatal(err)
		}
	}
}
