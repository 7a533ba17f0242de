package repo

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/zeebo/blake3"
)

// Sealed objects (index files, snapshots, generation markers) are
// age(zstd(payload)) to the repository recipient and the escrow recipients,
// so `age -d -i KEY | zstd -d` reads any of them.

// Encrypt starts an age stream to the repository's recipients (its own
// identity and any escrow recipients) on dst. The caller closes the writer
// to finish the stream. The WAL archive stores each segment this way.
func (r *Repo) Encrypt(dst io.Writer) (io.WriteCloser, error) {
	return age.Encrypt(dst, r.recipients...)
}

// NewSession starts an age session to the repository's recipients: many
// files under one header, each with its own nonce (agestream.Session). The
// WAL archive writes wal-receive's pieces this way.
func (r *Repo) NewSession() (*agestream.Session, error) {
	return agestream.NewSession(r.recipients...)
}

// Decrypt reads an age stream written by Encrypt. A stream that fails
// authentication returns an error from Read.
func (r *Repo) Decrypt(src io.Reader) (io.Reader, error) {
	return age.Decrypt(src, r.identities...)
}

func (r *Repo) seal(payload []byte) ([]byte, error) {
	compressed := r.zenc.EncodeAll(payload, make([]byte, 0, len(payload)/2+64))
	var buf bytes.Buffer
	w, err := r.Encrypt(&buf)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(compressed); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (r *Repo) unseal(key string, ct []byte, maxSize int64) ([]byte, error) {
	pr, err := r.Decrypt(bytes.NewReader(ct))
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, corrupt(key, "not encrypted to this repository's identity")
		}
		return nil, corrupt(key, "%v", err)
	}
	zr, err := zstd.NewReader(pr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(maxSize)),
		zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	b, err := io.ReadAll(io.LimitReader(zr, maxSize+1))
	if err != nil {
		return nil, corrupt(key, "%v", err)
	}
	if int64(len(b)) > maxSize {
		return nil, corrupt(key, "more than %d bytes of plaintext", maxSize)
	}
	return b, nil
}

// contentKey names a sealed object by the BLAKE3-256 of its ciphertext,
// like packs.
func contentKey(prefix string, ct []byte) string {
	sum := blake3.Sum256(ct)
	return prefix + hex.EncodeToString(sum[:])
}

func (r *Repo) putSealed(ctx context.Context, key string, payload []byte, create bool) error {
	ct, err := r.seal(payload)
	if err != nil {
		return fmt.Errorf("seal %s: %w", key, err)
	}
	return r.putBytes(ctx, key, ct, create)
}

func (r *Repo) putBytes(ctx context.Context, key string, b []byte, create bool) error {
	if create {
		return r.store.Create(ctx, key, bytes.NewReader(b), int64(len(b)))
	}
	return r.store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
}

// getBytes reads a whole object of at most maxSize bytes.
func (r *Repo) getBytes(ctx context.Context, key string, maxSize int64) ([]byte, error) {
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSize+1))
	if err != nil {
		return nil, &storage.Error{Op: "get", Key: key, Err: err}
	}
	if int64(len(b)) > maxSize {
		return nil, corrupt(key, "larger than %d bytes", maxSize)
	}
	return b, nil
}

func (r *Repo) getSealed(ctx context.Context, key string, maxSize int64) ([]byte, error) {
	// The ciphertext of a zstd payload of maxSize is at most a little more.
	ct, err := r.getBytes(ctx, key, maxSize+maxSize/8+64<<10)
	if err != nil {
		return nil, err
	}
	return r.unseal(key, ct, maxSize)
}
