// Package repo is the tidemark repository format on top of an object store:
// keys, blobs in encrypted packs, the index, snapshots, leases and raw
// encrypted objects. docs/format.md describes every byte it writes.
//
// One rule is stated once and enforced by the API: packs, then the index
// delta that lists them, then the snapshot that refers to them. The only way
// to write a snapshot is Writer.Commit, which flushes, indexes and checks
// the snapshot's roots before creating it.
//
// This package knows nothing of PostgreSQL beyond the plain fields of a
// Snapshot, and nothing of how backups lay out files in blobs (that is the
// backup's file-map format, stored here as meta blobs).
package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"filippo.io/age/plugin"
	"github.com/klauspost/compress/zstd"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/keys"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
)

// Options tune a Repo's resource use. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger // slog.DiscardHandler when nil
	// PackMemory bounds the bytes of pack buffers a Writer holds (open packs
	// and packs waiting for or in upload). A Writer fills packs of the
	// repository's pack size, or smaller ones when two of those (one
	// filling while the other uploads) would not fit. Default
	// DefaultPackMemory.
	PackMemory int64
	// UploadConcurrency is the number of parallel pack uploads. Default 2.
	UploadConcurrency int
	// ReadConcurrency is the number of parallel ranged GETs of ReadBlobs.
	// Default 8.
	ReadConcurrency int
	// ReadMemory bounds the bytes all ReadBlobs calls of the Repo hold in
	// flight together (stored blob, chunks, decoded blob of every GET
	// being read). Default 64 MiB.
	ReadMemory int64
	// IndexSpillDir is where the blob index keeps what does not stay in
	// memory (index.NewSpilling): temporary files, removed by the system
	// when the process ends. Default os.TempDir(); "-" keeps it all in
	// memory.
	IndexSpillDir string
	// IndexMemory bounds the bytes of index entries kept in memory before
	// the rest spill to IndexSpillDir (about 1.8 bytes an entry stay in
	// memory for those). Default index.DefaultMemory (13 MiB).
	IndexMemory int64
	// OnIndexMemory, when set, is called with the memory the blob indexes
	// hold (index.Index.MemBytes, the quarantined blobs' included) after
	// the index is loaded and whenever it has moved by indexReportStep
	// since the last call: IndexMemory bounds the entries, but the overlay
	// of recent additions, the packs and about 1.8 bytes per spilled
	// entry come on top, so that a command can count what the index
	// really holds in its memory limit. Calls are serialised.
	OnIndexMemory func(bytes int64)
	// CoalesceGap: ReadBlobs reads two blobs of a pack with one GET when at
	// most this many bytes lie between them. Default 256 KiB.
	CoalesceGap int64
	// IndexEveryPacks and IndexEvery: a Writer writes an index delta after
	// this many uploaded packs or this much time, whichever comes first, so
	// that an interrupted run's uploads are reused. Defaults 16 packs, 5 min.
	IndexEveryPacks int
	IndexEvery      time.Duration
	// Host names this machine in key files, leases and snapshots.
	Host string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Defaults of Options.
const (
	// DefaultPackMemory holds two data packs of about 13 MiB: a pack that
	// fills while the one before it uploads is all a writer needs to keep
	// compressing (an upload to a store on the same network takes a
	// fraction of the time the pack took to fill), and the peak RSS of a
	// backup stays under 96 MiB. Four packs of 32 MiB took it to 130 MiB;
	// with 40 MiB (packs of about 17 MiB) an incremental at pgbench scale
	// 1000 peaked at 97.6 MiB, with 32 MiB at 92.3 (46.7 s against 48.3).
	DefaultPackMemory = 32 << 20

	defaultUploadConcurrency = 2
	defaultReadConcurrency   = 8
	defaultReadMemory        = 64 << 20
	defaultCoalesceGap       = 256 << 10
	defaultIndexEveryPacks   = 16
	defaultIndexEvery        = 5 * time.Minute
	maxReadSpan              = 16 << 20 // bytes of one coalesced GET
)

func (o *Options) fill(cfg *Config) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.PackMemory <= 0 {
		o.PackMemory = DefaultPackMemory
	}
	if o.UploadConcurrency <= 0 {
		o.UploadConcurrency = defaultUploadConcurrency
	}
	if o.ReadConcurrency <= 0 {
		o.ReadConcurrency = defaultReadConcurrency
	}
	if o.ReadMemory <= 0 {
		o.ReadMemory = defaultReadMemory
	}
	if o.CoalesceGap <= 0 {
		o.CoalesceGap = defaultCoalesceGap
	}
	if o.IndexEveryPacks <= 0 {
		o.IndexEveryPacks = defaultIndexEveryPacks
	}
	if o.IndexEvery <= 0 {
		o.IndexEvery = defaultIndexEvery
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Repo is an open repository. It is safe for concurrent use.
type Repo struct {
	store      storage.Store
	cfg        Config
	opts       Options
	log        *slog.Logger
	secret     *keys.Secret
	keyID      string
	identities []age.Identity  // the repository's own identities
	recipients []age.Recipient // repository recipient + escrow
	hasher     *blob.Hasher
	zenc       *zstd.Encoder
	zdec       *zstd.Decoder
	// readMem bounds the bytes of every ReadBlobs of this Repo together
	// (Options.ReadMemory): a backup's workers each read base slots at
	// once, and a bound per call let them hold the bound each.
	readMem *readBudget
	// readBufs are ciphertext buffers kept for the next ranged read.
	readBufs bufList

	idxMu     sync.Mutex
	idx       *index.Index
	idxLoaded bool
	// exclude are the packs garbage collection had quarantined when this
	// process loaded its index (see excludeQuarantined): idx leaves them
	// out, so that writers never deduplicate against them and readers
	// prefer another copy of a blob; qidx holds the blobs found only in
	// them, which readers still reach (a snapshot that refers to one keeps
	// its pack from being deleted).
	exclude         map[pack.ID]struct{}
	qidx            *index.Index
	quarantinesRead bool
	// idxReportMu serialises Options.OnIndexMemory; idxReported is the
	// last value it was given (-1: none yet).
	idxReportMu sync.Mutex
	idxReported int64
}

// indexReportStep is how far the indexes' memory moves before
// Options.OnIndexMemory hears of it again.
const indexReportStep = 1 << 20

// reportIndexMemory tells Options.OnIndexMemory what the loaded indexes
// hold, when that moved by indexReportStep (or was never told).
func (r *Repo) reportIndexMemory() {
	if r.opts.OnIndexMemory == nil {
		return
	}
	r.idxMu.Lock()
	idx, qidx := r.idx, r.qidx
	r.idxMu.Unlock()
	var n int64
	for _, x := range []*index.Index{idx, qidx} {
		if x != nil {
			n += x.MemBytes()
		}
	}
	r.idxReportMu.Lock()
	defer r.idxReportMu.Unlock()
	if r.idxReported >= 0 && n > r.idxReported-indexReportStep && n < r.idxReported+indexReportStep {
		return
	}
	r.idxReported = n
	r.opts.OnIndexMemory(n)
}

// KeySpec describes the recipient of a new key file.
type KeySpec struct {
	// Recipient receives the master secret. Build it with ParseRecipient,
	// age.NewScryptRecipient or an age plugin client.
	Recipient age.Recipient
	// Type is one of keys.TypeX25519, TypeHybrid, TypeScrypt, TypePlugin;
	// String is the public recipient ("" for a passphrase). ParseRecipient
	// fills both.
	Type   string
	String string
	Label  string // free text shown by key list
}

// ParseRecipient makes a KeySpec from a native age public key string.
func ParseRecipient(s, label string) (KeySpec, error) {
	r, t, err := keys.ParseRecipient(s)
	if err != nil {
		return KeySpec{}, err
	}
	return KeySpec{Recipient: r, Type: t, String: strings.TrimSpace(s), Label: label}, nil
}

// PluginRecipient makes a KeySpec from an age plugin recipient
// ("age1<name>1..."): sealing the key file runs the plugin's program,
// age-plugin-<name>, which talks to the user through ui (a hardware key may
// ask for a PIN or a touch). A program that is not installed is a
// *PluginMissingError when the key file is written.
func PluginRecipient(s, label string, ui *plugin.ClientUI) (KeySpec, error) {
	s = strings.TrimSpace(s)
	r, err := plugin.NewRecipient(s, ui)
	if err != nil {
		return KeySpec{}, fmt.Errorf("recipient %q: %w", s, err)
	}
	return KeySpec{Recipient: r, Type: keys.TypePlugin, String: s, Label: label}, nil
}

// identitiesFor returns the identities worth trying on a key file: every
// native one, and only the plugin identities of the plugin the key file was
// sealed to, so that opening a repository starts no plugin program for a
// key file that is not its own (nor fails for want of one).
func identitiesFor(e *keys.Envelope, ids []age.Identity) []age.Identity {
	name := ""
	if e.RecipientType == keys.TypePlugin {
		name, _, _ = plugin.ParseRecipient(e.Recipient)
	}
	out := make([]age.Identity, 0, len(ids))
	for _, id := range ids {
		if p, ok := id.(*plugin.Identity); ok && p.Name() != name {
			continue
		}
		out = append(out, id)
	}
	return out
}

// PassphraseKey makes a KeySpec for a passphrase. workFactor is scrypt's
// log2(N); 0 takes age's default (18, about a second).
func PassphraseKey(passphrase, label string, workFactor int) (KeySpec, error) {
	r, err := age.NewScryptRecipient(passphrase)
	if err != nil {
		return KeySpec{}, err
	}
	if workFactor > 0 {
		r.SetWorkFactor(workFactor)
	}
	return KeySpec{Recipient: r, Type: keys.TypeScrypt, Label: label}, nil
}

// InitOptions configure a new repository.
type InitOptions struct {
	Options
	Key KeySpec // the first key
	// EscrowRecipients are native age public keys (age1..., age1pq1...)
	// every pack and object is also encrypted to. Plugins are refused here:
	// they would run for every pack. If any is a classic X25519 key, the
	// repository identity is X25519 too (age does not mix classic and
	// post-quantum recipients in one file, and a file is only as
	// quantum-safe as its weakest recipient).
	EscrowRecipients []string
	PackSize         int64 // DefaultPackSize when zero
	CompressionLevel int   // DefaultCompressionLevel when zero
	// Lock, when set, makes a locked repository (see Lock): the store must
	// be able to lock objects (an S3 bucket with object lock).
	Lock *Lock
	// ShareSecretOf, when set, makes the new repository a second
	// repository of that open one: it takes its master secret (so blob
	// IDs and the WAL MAC key agree, and copy sends only what is missing)
	// with a repository id, key files and repository identity of its own
	// (docs/format.md, "A second repository").
	ShareSecretOf *Repo
}

// InitResult reports what Init did.
type InitResult struct {
	Config   Config
	KeyID    string
	Warnings []string
}

func newRepoID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Init creates a repository: a key file for the first key, then the config
// object, create-only. A second Init on the same store returns an
// *ExistsError.
func Init(ctx context.Context, store storage.Store, opts InitOptions) (*Repo, InitResult, error) {
	var res InitResult
	if opts.Key.Recipient == nil {
		return nil, res, errors.New("init: no recipient for the first key")
	}
	if _, err := store.Head(ctx, ConfigKey); err == nil {
		return nil, res, &ExistsError{URL: store.String()}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, res, fmt.Errorf("init %s: %w", store, err)
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	cfg := Config{Format: FormatVersion, ID: newRepoID(), Created: now().UTC().Truncate(time.Second),
		PackSize: opts.PackSize, SlotSize: blob.SlotSize, Compression: "zstd",
		CompressionLevel: opts.CompressionLevel, Lock: opts.Lock}
	if cfg.PackSize == 0 {
		cfg.PackSize = DefaultPackSize
	}
	if cfg.CompressionLevel == 0 {
		cfg.CompressionLevel = DefaultCompressionLevel
	}
	classic := false
	for _, s := range opts.EscrowRecipients {
		if keys.IsPluginRecipient(s) {
			return nil, res, fmt.Errorf("escrow recipient %q is an age plugin recipient: every object would run the plugin; "+
				"give an age1... or age1pq1... public key (a plugin key can unlock the repository: init --recipient, key add --recipient)", strings.TrimSpace(s))
		}
		_, t, err := keys.ParseRecipient(s)
		if err != nil {
			return nil, res, fmt.Errorf("escrow recipient: %w", err)
		}
		if t == keys.TypeX25519 {
			classic = true
		}
		cfg.EscrowRecipients = append(cfg.EscrowRecipients, strings.TrimSpace(s))
	}
	if classic {
		res.Warnings = append(res.Warnings, "an escrow recipient is a classic X25519 key, so the repository "+
			"identity is X25519 as well: data is not protected against future quantum computers; "+
			"use age1pq1... escrow keys for that")
	}
	if _, err := cfg.Encode(); err != nil {
		return nil, res, fmt.Errorf("init: %w", err)
	}
	if cfg.Lock != nil {
		// The key file and the config are locked too: without them
		// nothing else can be read.
		if err := checkLockable(ctx, store); err != nil {
			return nil, res, fmt.Errorf("init: %w", err)
		}
		ls, err := lockedStore(store, cfg.Lock, now)
		if err != nil {
			return nil, res, fmt.Errorf("init: %w", err)
		}
		store = ls
	}
	var secret *keys.Secret
	var err error
	if opts.ShareSecretOf != nil {
		secret, err = keys.ShareSecret(cfg.ID, opts.ShareSecretOf.secret.Master, classic)
	} else {
		secret, err = keys.NewSecret(cfg.ID, classic)
	}
	if err != nil {
		return nil, res, err
	}
	r, err := newRepo(store, cfg, secret, opts.Options)
	if err != nil {
		return nil, res, err
	}
	env, err := r.writeKey(ctx, opts.Key)
	if err != nil {
		return nil, res, err
	}
	body, _ := cfg.Encode()
	if err := store.Create(ctx, ConfigKey, bytes.NewReader(body), int64(len(body))); err != nil {
		// Do not leave a key file of a repository that never was.
		r.store.Delete(context.WithoutCancel(ctx), keys.Prefix+env.ID)
		if errors.Is(err, storage.ErrExists) {
			return nil, res, &ExistsError{URL: store.String()}
		}
		return nil, res, fmt.Errorf("init: write %s: %w", ConfigKey, err)
	}
	r.keyID = env.ID
	r.idx, r.idxLoaded = r.newIndex(), true
	res.Config, res.KeyID = cfg, env.ID
	return r, res, nil
}

func newRepo(store storage.Store, cfg Config, secret *keys.Secret, opts Options) (*Repo, error) {
	opts.fill(&cfg)
	ids, rcpt, err := secret.RepositoryIdentities()
	if err != nil {
		return nil, err
	}
	recipients := []age.Recipient{rcpt}
	for _, s := range cfg.EscrowRecipients {
		er, _, err := keys.ParseRecipient(s)
		if err != nil {
			return nil, corrupt(ConfigKey, "escrow recipient: %v", err)
		}
		recipients = append(recipients, er)
	}
	procs := runtime.GOMAXPROCS(0)
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevel(cfg.CompressionLevel)),
		zstd.WithEncoderConcurrency(procs), zstd.WithWindowSize(blob.SlotSize),
		zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	zdec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(procs),
		zstd.WithDecoderMaxMemory(pack.MaxBlobSize), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	return &Repo{store: &metered{Store: store}, cfg: cfg, opts: opts, log: opts.Logger, secret: secret,
		identities: ids, recipients: recipients, hasher: blob.NewHasher(secret.BlobIDKey()),
		zenc: zenc, zdec: zdec, readMem: newReadBudget(opts.ReadMemory), idxReported: -1}, nil
}

// Open opens the repository with the identities (age identities, scrypt
// passphrase identities, plugin identities). It reads the config and the key
// files; the index is loaded on first use.
func Open(ctx context.Context, store storage.Store, identities []age.Identity, opts Options) (*Repo, error) {
	b, err := readSmall(ctx, store, ConfigKey, maxConfigSize)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, &NotRepositoryError{URL: store.String()}
	}
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", store, err)
	}
	cfg, err := DecodeConfig(b)
	if err != nil {
		return nil, err
	}
	if len(identities) == 0 {
		return nil, &NoIdentityError{URL: store.String()}
	}
	if cfg.Lock != nil {
		ls, err := lockedStore(store, cfg.Lock, opts.Now)
		if err != nil {
			return nil, fmt.Errorf("open repository at %s: %w", store, err)
		}
		store = ls
	}
	envs, err := listKeys(ctx, store)
	if err != nil {
		return nil, err
	}
	var newer *VersionError
	var idErr error // why an identity could not be tried (a plugin)
	for _, e := range envs {
		if e.err != nil {
			// A key file of a newer format may be the caller's: if no other
			// key opens, say to upgrade rather than "no identity".
			errors.As(e.err, &newer)
			continue
		}
		ids := identitiesFor(e.env, identities)
		if len(ids) == 0 {
			continue
		}
		secret, err := keys.Open(e.env, ids...)
		if err != nil {
			var nm *age.NoIdentityMatchError
			switch {
			case errors.As(err, &nm):
			case e.env.RecipientType == keys.TypePlugin && !errors.Is(err, keys.ErrFormat):
				// The plugin did not run, or failed: say so if no other
				// key opens.
				if idErr == nil {
					idErr = pluginError(err)
				}
				slogFrom(opts).Debug("age plugin failed on a key file", "key", keys.Prefix+e.env.ID, "err", err)
			default:
				slogFrom(opts).Warn("key file unreadable", "key", keys.Prefix+e.env.ID, "err", err)
			}
			continue
		}
		if secret.Repository != cfg.ID {
			slogFrom(opts).Warn("key file belongs to another repository; ignored", "key", keys.Prefix+e.env.ID)
			continue
		}
		r, err := newRepo(store, *cfg, secret, opts)
		if err != nil {
			return nil, err
		}
		r.keyID = e.env.ID
		return r, nil
	}
	if newer != nil {
		return nil, newer
	}
	return nil, &NoIdentityError{URL: store.String(), Keys: len(envs), Err: idErr}
}

func slogFrom(o Options) *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// newIndex returns an empty blob index as the options want it.
func (r *Repo) newIndex() *index.Index {
	switch d := r.opts.IndexSpillDir; d {
	case "-":
		return index.New()
	case "":
		return index.NewSpilling(os.TempDir(), r.opts.IndexMemory)
	default:
		return index.NewSpilling(d, r.opts.IndexMemory)
	}
}

// Config returns the repository's config.
func (r *Repo) Config() Config { return r.cfg }

// Store returns the object store.
func (r *Repo) Store() storage.Store { return r.store }

// KeyID returns the id of the key file the repository was opened with.
func (r *Repo) KeyID() string { return r.keyID }

// CheckSharedSecret returns nil when o shares this repository's master
// secret (one was made from the other with InitOptions.ShareSecretOf),
// else a *SecretMismatchError: blob IDs and WAL MACs of the two do not
// agree, so one cannot stand in for or be copied into the other.
func (r *Repo) CheckSharedSecret(o *Repo) error {
	if keys.SameMaster(r.secret, o.secret) {
		return nil
	}
	return &SecretMismatchError{URL: o.store.String(), First: r.store.String()}
}

// WALMACKey returns the key the WAL archive authenticates segments with.
func (r *Repo) WALMACKey() [keys.SubKeySize]byte { return r.secret.WALMACKey() }

// BlobID returns the ID a blob of kind k with plaintext data has in this
// repository (the zero sentinel for an all-zero slot), for example to
// compare a local file with a snapshot without reading the repository.
func (r *Repo) BlobID(k blob.Kind, data []byte) blob.ID {
	if blob.IsZeroSlot(k, data) {
		return blob.ZeroID
	}
	return r.hasher.Sum(k, data)
}

// Close releases the repository's resources.
func (r *Repo) Close() error {
	r.zenc.Close()
	r.zdec.Close()
	return nil
}

// AcquireLease takes a lease in scope (see repo/lease); a conflict is a
// *LockedError naming the holder.
func (r *Repo) AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error) {
	if opts.Logger == nil {
		opts.Logger = r.log
	}
	if opts.Host == "" {
		opts.Host = r.opts.Host
	}
	if opts.Now == nil {
		opts.Now = r.opts.Now
	}
	return lease.Acquire(ctx, r.store, scope, opts)
}

// Leases lists the leases of scope, live and expired.
func (r *Repo) Leases(ctx context.Context, scope string) ([]lease.Info, error) {
	return lease.List(ctx, r.store, scope)
}

func readSmall(ctx context.Context, store storage.Store, key string, maxSize int64) ([]byte, error) {
	r := &Repo{store: store}
	return r.getBytes(ctx, key, maxSize)
}

type keyFile struct {
	key string
	env *keys.Envelope
	err error
}

func listKeys(ctx context.Context, store storage.Store) ([]keyFile, error) {
	var out []keyFile
	for oi, err := range store.List(ctx, keys.Prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", keys.Prefix, err)
		}
		b, err := readSmall(ctx, store, oi.Key, keys.MaxEnvelopeSize)
		if errors.Is(err, storage.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read key %s: %w", oi.Key, err)
		}
		var v struct {
			Format int `json:"format"`
		}
		if json.Unmarshal(b, &v) == nil && v.Format > keys.EnvelopeVersion {
			out = append(out, keyFile{key: oi.Key,
				err: &VersionError{Key: oi.Key, Version: v.Format, Supported: keys.EnvelopeVersion}})
			continue
		}
		env, err := keys.DecodeEnvelope(b)
		switch {
		case err == nil && keys.Prefix+env.ID != oi.Key:
			err = corrupt(oi.Key, "key file names id %s", env.ID)
		case err != nil:
			err = &CorruptError{Key: oi.Key, Err: err}
		}
		out = append(out, keyFile{key: oi.Key, env: env, err: err})
	}
	return out, nil
}

func (r *Repo) writeKey(ctx context.Context, spec KeySpec) (*keys.Envelope, error) {
	if spec.Recipient == nil {
		return nil, errors.New("key: no recipient")
	}
	env, err := keys.Seal(r.secret, spec.Recipient, spec.Type, spec.String, spec.Label, r.opts.Host)
	if err != nil {
		return nil, pluginError(err)
	}
	env.Created = r.opts.Now().UTC().Truncate(time.Second)
	body, err := env.Encode()
	if err != nil {
		return nil, err
	}
	key := keys.Prefix + env.ID
	if err := r.store.Create(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
		return nil, fmt.Errorf("write key %s: %w", key, err)
	}
	return env, nil
}

// keysLease serialises key changes so that two concurrent removals cannot
// delete the last two keys.
const keysLease = "keys"

// AddKey grants access to another recipient: it writes one more key file.
func (r *Repo) AddKey(ctx context.Context, spec KeySpec) (keys.Envelope, error) {
	l, err := r.AcquireLease(ctx, keysLease, lease.Options{Exclusive: true, Command: "key add"})
	if err != nil {
		return keys.Envelope{}, err
	}
	defer l.Release(context.WithoutCancel(ctx))
	env, err := r.writeKey(ctx, spec)
	if err != nil {
		return keys.Envelope{}, err
	}
	return *env, nil
}

// KeyInfo is a key file as listed.
type KeyInfo struct {
	keys.Envelope
	Current bool  // the key this Repo was opened with
	Err     error // the key file is unreadable (then only ID is set)
}

// ListKeys lists the key files without decrypting them.
func (r *Repo) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	kfs, err := listKeys(ctx, r.store)
	if err != nil {
		return nil, err
	}
	out := make([]KeyInfo, 0, len(kfs))
	for _, kf := range kfs {
		if kf.err != nil {
			out = append(out, KeyInfo{Envelope: keys.Envelope{ID: strings.TrimPrefix(kf.key, keys.Prefix)}, Err: kf.err})
			continue
		}
		ki := KeyInfo{Envelope: *kf.env, Current: kf.env.ID == r.keyID}
		ki.Secret = nil
		out = append(out, ki)
	}
	slices.SortFunc(out, func(a, b KeyInfo) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// RemoveKey revokes a key file by id or unique id prefix (at least 4 hex
// digits). Removing the last readable key is refused with ErrLastKey.
// Revocation does not re-encrypt data: whoever copied the master secret
// before keeps it.
func (r *Repo) RemoveKey(ctx context.Context, idOrPrefix string) (string, error) {
	l, err := r.AcquireLease(ctx, keysLease, lease.Options{Exclusive: true, Command: "key remove"})
	if err != nil {
		return "", err
	}
	defer l.Release(context.WithoutCancel(ctx))
	kfs, err := listKeys(ctx, r.store)
	if err != nil {
		return "", err
	}
	var match []keyFile
	readable := 0
	for _, kf := range kfs {
		if kf.err == nil {
			readable++
		}
		id := strings.TrimPrefix(kf.key, keys.Prefix)
		if id == idOrPrefix || (len(idOrPrefix) >= 4 && strings.HasPrefix(id, idOrPrefix)) {
			match = append(match, kf)
		}
	}
	switch {
	case len(match) == 0:
		return "", fmt.Errorf("no key %q; see 'tidemark key list'", idOrPrefix)
	case len(match) > 1:
		return "", fmt.Errorf("key prefix %q is ambiguous (%d keys); give more digits", idOrPrefix, len(match))
	}
	if match[0].err == nil && readable <= 1 {
		return "", fmt.Errorf("%w %s: add another key first ('tidemark key add'), or nobody can open the repository",
			ErrLastKey, match[0].key)
	}
	if err := r.store.Delete(ctx, match[0].key); err != nil {
		return "", fmt.Errorf("remove key %s: %w", match[0].key, err)
	}
	return strings.TrimPrefix(match[0].key, keys.Prefix), nil
}
