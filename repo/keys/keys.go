// Package keys defines tidemark's key files and the keys derived from a
// repository's master secret.
//
// A repository has one random master secret. Each keys/<id> object is a small
// plaintext JSON envelope (so that keys can be listed without decrypting)
// carrying an age file that encrypts the secret payload to exactly one
// recipient: an X25519 or hybrid post-quantum public key, a passphrase
// (scrypt), or an age plugin recipient. Granting or revoking access writes or
// deletes key files only; data is never rewritten.
//
// Sub-keys come from the master secret by HKDF-SHA256 (see Secret.derive);
// the repository's age identity, which all data is encrypted to, is stored in
// the secret payload so that it can later be rotated without a format change.
//
// This package does no storage I/O: repo reads and writes key files.
package keys

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"filippo.io/age"
)

// Format constants. They are part of the on-storage format.
const (
	// EnvelopeVersion is the version of the key file envelope and payload.
	EnvelopeVersion = 1
	// MasterSize is the master secret's size in bytes.
	MasterSize = 32
	// SubKeySize is the size in bytes of every derived key.
	SubKeySize = 32
	// MaxEnvelopeSize bounds a key file in bytes (a plugin stanza may be a few
	// KiB; a payload with a handful of identities is about 4 KiB).
	MaxEnvelopeSize = 1 << 20
	// Prefix is the object key prefix of key files.
	Prefix = "keys/"
)

// HKDF info strings of the derived keys. Part of the format.
const (
	infoBlobID = "tidemark v1 blob-id"
	infoWALMAC = "tidemark v1 wal-mac"
)

// Recipient types as recorded in an envelope.
const (
	TypeX25519 = "x25519"
	TypeHybrid = "mlkem768x25519"
	TypeScrypt = "scrypt"
	TypePlugin = "plugin"
)

// Envelope is a key file as stored (plaintext JSON).
type Envelope struct {
	Format        int       `json:"format"`
	ID            string    `json:"id"`
	Created       time.Time `json:"created"`
	Label         string    `json:"label,omitempty"`
	Host          string    `json:"host,omitempty"`
	RecipientType string    `json:"recipient_type"`
	// Recipient is the public recipient string; empty for a passphrase.
	Recipient string `json:"recipient,omitempty"`
	// Secret is the age file (binary, base64 in JSON) encrypting the
	// Secret payload as JSON to the one recipient.
	Secret []byte `json:"secret"`
}

// Secret is the decrypted payload of a key file.
type Secret struct {
	Format int `json:"format"`
	// Repository is the repository id the secret belongs to, so that a key
	// file copied into another repository is refused.
	Repository string `json:"repository"`
	// Master is the random master secret.
	Master []byte `json:"master"`
	// Identities are the repository's age identities (AGE-SECRET-KEY-...).
	// New objects are encrypted to the recipient of the first; all are tried
	// when reading.
	Identities []string `json:"identities"`
}

// ErrFormat is matched by every decoding failure.
var ErrFormat = errors.New("malformed key file")

// NewID returns a random key id (16 hex digits).
func NewID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidID reports whether s looks like a key id (hex, at most 64 digits).
func ValidID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Encode returns the JSON of an envelope.
func (e *Envelope) Encode() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(e, "", "  ")
}

func (e *Envelope) validate() error {
	switch {
	case e.Format != EnvelopeVersion:
		return fmt.Errorf("%w: format %d, this tidemark reads %d", ErrFormat, e.Format, EnvelopeVersion)
	case !ValidID(e.ID):
		return fmt.Errorf("%w: id %q", ErrFormat, e.ID)
	case len(e.Secret) == 0:
		return fmt.Errorf("%w: no secret", ErrFormat)
	}
	switch e.RecipientType {
	case TypeX25519, TypeHybrid, TypePlugin:
		if e.Recipient == "" {
			return fmt.Errorf("%w: %s key without recipient", ErrFormat, e.RecipientType)
		}
	case TypeScrypt:
	default:
		return fmt.Errorf("%w: recipient type %q", ErrFormat, e.RecipientType)
	}
	return nil
}

// DecodeEnvelope parses a key file. A newer format version is reported as
// such (it matches ErrFormat) so that callers can say to upgrade.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrFormat, len(b))
	}
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// NewSecret returns a fresh master secret for repository repoID with a new
// repository identity: hybrid post-quantum unless classic is set (needed
// when escrow recipients are classic X25519 keys, which age refuses to mix
// with post-quantum ones in one file).
func NewSecret(repoID string, classic bool) (*Secret, error) {
	s := &Secret{Format: EnvelopeVersion, Repository: repoID, Master: make([]byte, MasterSize)}
	rand.Read(s.Master)
	if classic {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return nil, err
		}
		s.Identities = []string{id.String()}
	} else {
		id, err := age.GenerateHybridIdentity()
		if err != nil {
			return nil, err
		}
		s.Identities = []string{id.String()}
	}
	return s, nil
}

// ShareSecret returns the secret of a second repository, repoID, that
// shares master (the first repository's master secret, so that blob IDs
// and the WAL MAC key agree and one repository's contents can be checked
// and deduplicated against the other's) but has a repository identity of
// its own: data stored in it is encrypted to that identity, never to the
// first repository's. classic is as for NewSecret.
func ShareSecret(repoID string, master []byte, classic bool) (*Secret, error) {
	if len(master) != MasterSize {
		return nil, fmt.Errorf("%w: master secret of %d bytes", ErrFormat, len(master))
	}
	s, err := NewSecret(repoID, classic)
	if err != nil {
		return nil, err
	}
	copy(s.Master, master)
	return s, nil
}

// SameMaster reports, in constant time, whether two secrets share their
// master secret.
func SameMaster(a, b *Secret) bool {
	return len(a.Master) == MasterSize && subtle.ConstantTimeCompare(a.Master, b.Master) == 1
}

// Validate checks a decrypted payload.
func (s *Secret) Validate() error {
	switch {
	case s.Format != EnvelopeVersion:
		return fmt.Errorf("%w: secret format %d", ErrFormat, s.Format)
	case len(s.Master) != MasterSize:
		return fmt.Errorf("%w: master secret of %d bytes", ErrFormat, len(s.Master))
	case len(s.Identities) == 0:
		return fmt.Errorf("%w: no repository identity", ErrFormat)
	}
	_, _, err := s.RepositoryIdentities()
	return err
}

// RepositoryIdentities parses the repository's identities and returns them
// with the recipient that new objects are encrypted to.
func (s *Secret) RepositoryIdentities() ([]age.Identity, age.Recipient, error) {
	ids := make([]age.Identity, 0, len(s.Identities))
	var rcpt age.Recipient
	for i, str := range s.Identities {
		switch {
		case strings.HasPrefix(str, "AGE-SECRET-KEY-PQ-1"):
			id, err := age.ParseHybridIdentity(str)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: repository identity %d: %v", ErrFormat, i, err)
			}
			ids = append(ids, id)
			if i == 0 {
				rcpt = id.Recipient()
			}
		case strings.HasPrefix(str, "AGE-SECRET-KEY-1"):
			id, err := age.ParseX25519Identity(str)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: repository identity %d: %v", ErrFormat, i, err)
			}
			ids = append(ids, id)
			if i == 0 {
				rcpt = id.Recipient()
			}
		default:
			return nil, nil, fmt.Errorf("%w: repository identity %d of unknown type", ErrFormat, i)
		}
	}
	return ids, rcpt, nil
}

func (s *Secret) derive(info string) [SubKeySize]byte {
	var k [SubKeySize]byte
	// No salt: the master secret is uniformly random and per repository.
	b, err := hkdf.Key(sha256.New, s.Master, nil, info, SubKeySize)
	if err != nil {
		panic("keys: hkdf: " + err.Error()) // only for absurd lengths
	}
	copy(k[:], b)
	return k
}

// BlobIDKey is the BLAKE3 key of blob IDs.
func (s *Secret) BlobIDKey() [SubKeySize]byte { return s.derive(infoBlobID) }

// WALMACKey is the key the WAL archive authenticates segment names and
// contents with.
func (s *Secret) WALMACKey() [SubKeySize]byte { return s.derive(infoWALMAC) }

// Seal returns an envelope for the secret encrypted to one recipient.
func Seal(s *Secret, r age.Recipient, recipientType, recipientString, label, host string) (*Envelope, error) {
	payload, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, r)
	if err != nil {
		return nil, fmt.Errorf("encrypt key file: %w", err)
	}
	if _, err := w.Write(payload); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if recipientType == TypeScrypt {
		recipientString = ""
	}
	e := &Envelope{Format: EnvelopeVersion, ID: NewID(), Created: time.Now().UTC().Truncate(time.Second),
		Label: label, Host: host, RecipientType: recipientType, Recipient: recipientString, Secret: buf.Bytes()}
	return e, e.validate()
}

// Open decrypts an envelope with the identities. It returns an error
// matching *age.NoIdentityMatchError when none of them fits.
func Open(e *Envelope, identities ...age.Identity) (*Secret, error) {
	r, err := age.Decrypt(bytes.NewReader(e.Secret), identities...)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(r, MaxEnvelopeSize))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	var s Secret
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrFormat, err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// ParseRecipient parses a native public recipient for a key file or escrow:
// "age1pq1..." (hybrid post-quantum) or "age1..." (X25519). It returns the
// recipient and its type. Plugin recipients ("age1<name>1...", see
// IsPluginRecipient) are made by repo.PluginRecipient and sealed with
// TypePlugin; this package does not run plugins.
func ParseRecipient(s string) (age.Recipient, string, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(s, "age1pq1"):
		r, err := age.ParseHybridRecipient(s)
		return r, TypeHybrid, err
	case IsPluginRecipient(s):
		return nil, "", fmt.Errorf("recipient %q is an age plugin recipient, not a native age public key", s)
	case strings.HasPrefix(s, "age1"):
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			return nil, "", fmt.Errorf("recipient %q is neither an X25519, a hybrid nor a plugin age recipient: %w", s, err)
		}
		return r, TypeX25519, nil
	}
	return nil, "", fmt.Errorf("recipient %q: want an age public key (age1..., age1pq1...) or an age plugin recipient (age1<plugin>1...)", s)
}

// IsPluginRecipient reports whether s has the form of an age plugin
// recipient, "age1<name>1<bech32 data>": the human-readable part of an
// X25519 key is "age", of a hybrid key "age1pq".
func IsPluginRecipient(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	i := strings.LastIndexByte(s, '1')
	if !strings.HasPrefix(s, "age1") || i <= len("age1") {
		return false
	}
	hrp := s[:i]
	return hrp != "age1pq"
}
