package keys

import (
	"errors"
	"testing"

	"filippo.io/age"
)

func TestSealOpen(t *testing.T) {
	s, err := NewSecret("repo1", false)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateHybridIdentity()
	r, typ, err := ParseRecipient(id.Recipient().String())
	if err != nil || typ != TypeHybrid {
		t.Fatal(err)
	}
	env, err := Seal(s, r, typ, id.Recipient().String(), "laptop", "host1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := env.Encode()
	env2, err := DecodeEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(env2, id)
	if err != nil || got.Repository != "repo1" || string(got.Master) != string(s.Master) {
		t.Fatalf("open: %v", err)
	}
	if got.BlobIDKey() == got.WALMACKey() {
		t.Fatal("sub-keys are equal")
	}
	other, _ := age.GenerateX25519Identity()
	var nm *age.NoIdentityMatchError
	if _, err := Open(env2, other); !errors.As(err, &nm) {
		t.Fatalf("wrong identity: %v", err)
	}
	ids, rcpt, err := got.RepositoryIdentities()
	if err != nil || len(ids) != 1 || rcpt == nil {
		t.Fatal(err)
	}
	if _, ok := ids[0].(*age.HybridIdentity); !ok {
		t.Fatalf("repository identity is %T, want hybrid", ids[0])
	}
}

func TestParseRecipient(t *testing.T) {
	x, _ := age.GenerateX25519Identity()
	if _, typ, err := ParseRecipient(" " + x.Recipient().String() + "\n"); err != nil || typ != TypeX25519 {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "AGE-SECRET-KEY-1XYZ", "age1yubikey1qwerty", "ssh-ed25519 AAAA"} {
		if _, _, err := ParseRecipient(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	s, _ := NewSecret("r", true)
	id, _ := age.GenerateX25519Identity()
	env, _ := Seal(s, id.Recipient(), TypeX25519, id.Recipient().String(), "", "")
	b, _ := env.Encode()
	f.Add(b)
	f.Add([]byte(`{"format":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEnvelope(b)
		if err != nil {
			return
		}
		if _, err := e.Encode(); err != nil {
			t.Fatalf("decoded envelope does not encode: %v", err)
		}
		Open(e, id) // must not panic
	})
}
