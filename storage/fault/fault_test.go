package fault_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

func put(s storage.Store, key string) error {
	return s.Put(context.Background(), key, bytes.NewReader([]byte("0123456789")), 10)
}

// TestSelection checks "the 2nd and 3rd Put under data/".
func TestSelection(t *testing.T) {
	s := fault.New(mem.New())
	h := s.Add(fault.Rule{Ops: fault.Put, Prefix: "data/", Skip: 1, Times: 2, Kind: fault.Transient})
	for i, tc := range []struct {
		key  string
		fail bool
	}{
		{"data/1", false}, {"other/1", false}, {"data/2", true}, {"data/3", true}, {"data/4", false},
	} {
		err := put(s, tc.key)
		if (err != nil) != tc.fail {
			t.Errorf("put %d (%s): err = %v, want failure %v", i+1, tc.key, err, tc.fail)
		}
		if err != nil && (!storage.IsTransient(err) || !errors.Is(err, fault.ErrInjected)) {
			t.Errorf("injected error %v is not a transient ErrInjected", err)
		}
	}
	if _, err := s.Get(context.Background(), "data/2"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a failed put reached the store: %v", err)
	}
	if h.Hits() != 2 || s.Calls(fault.Put) != 5 || s.Calls(fault.Get) != 1 {
		t.Errorf("hits %d, puts %d, gets %d", h.Hits(), s.Calls(fault.Put), s.Calls(fault.Get))
	}
}

func TestKinds(t *testing.T) {
	ctx := context.Background()
	s := fault.New(mem.New())
	if err := put(s, "k"); err != nil {
		t.Fatal(err)
	}

	s.Add(fault.Rule{Ops: fault.Head, Times: 1, Kind: fault.Permanent})
	_, err := s.Head(ctx, "k")
	if !errors.Is(err, storage.ErrPermanent) || storage.IsTransient(err) {
		t.Errorf("permanent: %v", err)
	}

	s.Add(fault.Rule{Ops: fault.Get, Times: 1, Kind: fault.Truncate, After: 4})
	rc, _ := s.Get(ctx, "k")
	b, err := io.ReadAll(rc)
	if string(b) != "0123" || err != nil {
		t.Errorf("truncate: %q, %v", b, err)
	}

	s.Add(fault.Rule{Ops: fault.GetRange, Times: 1, Kind: fault.Drop, After: 3})
	rc, _ = s.GetRange(ctx, "k", 2, 6)
	b, err = io.ReadAll(rc)
	if string(b) != "234" || !storage.IsTransient(err) {
		t.Errorf("drop: %q, %v", b, err)
	}

	s.Add(fault.Rule{Ops: fault.Create, Times: 1, Kind: fault.LoseAck})
	err = s.Create(ctx, "acked", bytes.NewReader([]byte("x")), 1)
	if !storage.IsTransient(err) {
		t.Errorf("lose ack: %v", err)
	}
	if _, err := s.Head(ctx, "acked"); err != nil {
		t.Errorf("lose ack did not write: %v", err)
	}

	s.Add(fault.Rule{Ops: fault.List, Times: 1, Kind: fault.Drop, After: 1})
	var n int
	for _, err := range s.List(ctx, "", "") {
		if err != nil {
			if !storage.IsTransient(err) {
				t.Errorf("list drop: %v", err)
			}
			break
		}
		n++
	}
	if n != 1 {
		t.Errorf("list drop after 1 key yielded %d", n)
	}

	s.Add(fault.Rule{Ops: fault.Delete, Times: 1, Delay: time.Hour})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := s.Delete(cctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delay did not honour the context: %v", err)
	}
}

func TestOutage(t *testing.T) {
	ctx := context.Background()
	s := fault.New(mem.New())
	if err := put(s, "k"); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	s.Down()
	if err := put(s, "k2"); !errors.Is(err, fault.ErrUnreachable) || !storage.IsTransient(err) {
		t.Errorf("put while down: %v", err)
	}
	if _, err := rc.Read(make([]byte, 1)); !errors.Is(err, fault.ErrUnreachable) {
		t.Errorf("read of an open body while down: %v", err)
	}
	s.Up()
	if err := put(s, "k2"); err != nil {
		t.Errorf("put after up: %v", err)
	}
	s.Outage(20 * time.Millisecond)
	if err := put(s, "k3"); err == nil {
		t.Error("put during outage succeeded")
	}
	time.Sleep(30 * time.Millisecond)
	if err := put(s, "k3"); err != nil {
		t.Errorf("put after the outage healed: %v", err)
	}
}
