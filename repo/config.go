package repo

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/pack"
)

// FormatVersion is the repository format this build writes and the newest it
// reads.
const FormatVersion = 1

// SnapshotFormat is the snapshot format this build writes and the newest
// it reads. 2: the snapshot's pages may be in patch-runs blobs
// (blob.KindPatchRuns), which a reader of format 1 would not know from
// KindPatch blobs by their bytes; it refuses the snapshot instead
// (VersionError) and so never writes their runs where pages belong.
const SnapshotFormat = 2

// ConfigKey is the object key of the config.
const ConfigKey = "config"

// Defaults of a new repository. Chosen by benchmark; see docs/format.md.
const (
	// DefaultPackSize is the target pack plaintext size in bytes.
	DefaultPackSize = 32 << 20
	// MinPackSize bounds PackSize from below (bytes); tests use it.
	MinPackSize = 64 << 10
	// DefaultCompressionLevel is klauspost/compress zstd's SpeedFastest.
	DefaultCompressionLevel = 1
	// maxConfigSize bounds the config object in bytes.
	maxConfigSize = 1 << 20
)

// Config is the repository's plaintext config object, written once.
type Config struct {
	Format  int       `json:"format"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// PackSize is the target pack plaintext size in bytes.
	PackSize int64 `json:"pack_size"`
	// SlotSize is the relation slot size in bytes (the zero sentinel's size).
	SlotSize int `json:"slot_size"`
	// Compression is "zstd"; CompressionLevel is 1 (fastest) to 4 (best),
	// klauspost/compress zstd EncoderLevel numbering.
	Compression      string `json:"compression"`
	CompressionLevel int    `json:"compression_level"`
	// EscrowRecipients are public age recipients every encrypted object is
	// also encrypted to.
	EscrowRecipients []string `json:"escrow_recipients,omitempty"`
	// Lock, when set, is the object lock every immutable object is
	// written under (see Lock).
	Lock *Lock `json:"lock,omitempty"`
}

func (c *Config) validate() error {
	switch {
	case c.ID == "" || len(c.ID) > 64:
		return fmt.Errorf("repository id %q", c.ID)
	case c.PackSize < MinPackSize || c.PackSize > pack.MaxSize/2:
		return fmt.Errorf("pack size %d outside %d..%d", c.PackSize, MinPackSize, pack.MaxSize/2)
	case c.SlotSize != blob.SlotSize:
		return fmt.Errorf("slot size %d, this format has %d", c.SlotSize, blob.SlotSize)
	case c.Compression != "zstd":
		return fmt.Errorf("compression %q", c.Compression)
	case c.CompressionLevel < 1 || c.CompressionLevel > 4:
		return fmt.Errorf("compression level %d outside 1..4", c.CompressionLevel)
	}
	if c.Lock != nil {
		return c.Lock.validate()
	}
	return nil
}

// DecodeConfig parses a config object. A newer format version is a
// *VersionError.
func DecodeConfig(b []byte) (*Config, error) {
	if len(b) > maxConfigSize {
		return nil, corrupt(ConfigKey, "%d bytes", len(b))
	}
	var v struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, corrupt(ConfigKey, "%v", err)
	}
	if v.Format > FormatVersion {
		return nil, &VersionError{Key: ConfigKey, Version: v.Format, Supported: FormatVersion}
	}
	if v.Format < 1 {
		return nil, corrupt(ConfigKey, "format version %d", v.Format)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, corrupt(ConfigKey, "%v", err)
	}
	if err := c.validate(); err != nil {
		return nil, corrupt(ConfigKey, "%v", err)
	}
	return &c, nil
}

// Encode returns the config's JSON.
func (c *Config) Encode() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(c, "", "  ")
}
