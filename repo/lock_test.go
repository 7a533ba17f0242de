package repo

import (
	"context"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

func TestLockCovers(t *testing.T) {
	for k, want := range map[string]bool{
		ConfigKey: true, "keys/abc": true, "data/ab/abcdef": true, "meta/ab/abcdef": true,
		"index/delta/ab": true, "index/gen/0000000001/complete": true, "snapshots/1/x": true,
		"wal/1/0000000100000000/000000010000000000000003": true,
		QuarantineKey("x"): false, lease.Prefix + "backup-1/x": false, "retention/1": false, "drills/1/x": false,
		"verify/state": false, "configx": false,
	} {
		if got := LockCovers(k); got != want {
			t.Errorf("LockCovers(%q) = %v, want %v", k, got, want)
		}
	}
}

func TestLockConfig(t *testing.T) {
	for _, l := range []Lock{
		{Mode: "retain", PeriodSeconds: 86400},
		{Mode: storage.RetentionCompliance},
		{Mode: storage.RetentionGovernance, PeriodSeconds: -1},
		{Mode: storage.RetentionGovernance, PeriodSeconds: 1 << 62},
	} {
		if err := l.validate(); err == nil {
			t.Errorf("lock %+v accepted", l)
		}
	}
	l := Lock{Mode: storage.RetentionCompliance, PeriodSeconds: 14 * 86400}
	if err := l.validate(); err != nil || l.slack().Hours() != 1 {
		t.Fatalf("14 days: %v, slack %v", err, l.slack())
	}
}

// TestInitLockNeedsCapability: a store that cannot lock objects is refused
// at init with a message saying what is needed, and nothing is written.
func TestInitLockNeedsCapability(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	spec, _ := ParseRecipient(id.Recipient().String(), "")
	st := mem.New()
	_, _, err := Init(context.Background(), st, InitOptions{Key: spec,
		Lock: &Lock{Mode: storage.RetentionCompliance, PeriodSeconds: 86400}})
	if err == nil || !strings.Contains(err.Error(), "S3 Object Lock") {
		t.Fatalf("init of a locked repository on memory: %v", err)
	}
	for _, err := range st.List(context.Background(), "", "") {
		t.Fatalf("list: %v", err)
	}
	for oi := range st.List(context.Background(), "", "") {
		t.Fatalf("init left %s behind", oi.Key)
	}
}
