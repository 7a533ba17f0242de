// Package agestream reads and writes the payload of age-encryption.org/v1
// files by chunk, so that a byte range of a large age file can be decrypted
// from one ranged GET of just the chunks that hold it.
//
// age v1.3's DecryptReaderAt reads the header and the final chunk when it
// opens a file (extra round trips per pack on object storage). Here the
// payload key of a file is captured once when the file is written (and kept
// in the encrypted index) or recovered from its header, and any chunk range
// is decrypted directly:
//
//	payload key = HKDF-SHA256(ikm = file key, salt = 16-byte nonce, info = "payload")
//	chunk i     = ChaCha20-Poly1305(payload key, nonce = 11-byte big-endian i || last flag)
//
// with 64 KiB plaintext chunks, each followed by its 16-byte tag; only the
// final chunk has the flag byte 0x01 and may be shorter (it is empty only when
// the whole payload is). This is the STREAM construction of the age spec; the
// tests check that it agrees with age.Decrypt on every boundary.
//
// It is not an age implementation: headers and recipients are handled by
// filippo.io/age, and files written here are ordinary age files.
package agestream

import (
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
)

// Sizes of the age STREAM payload, in bytes.
const (
	ChunkSize    = 64 << 10                  // plaintext bytes per chunk
	TagSize      = chacha20poly1305.Overhead // Poly1305 tag after each chunk
	EncChunkSize = ChunkSize + TagSize       // ciphertext bytes per full chunk
	NonceSize    = 16                        // random nonce between header and payload
	KeySize      = chacha20poly1305.KeySize  // payload key
	fileKeySize  = 16                        // age file key
	maxChunks    = 1 << 40                   // far below the 2^88 counter limit; bounds sizes to 64 PiB
)

// ErrAuth means a chunk failed authentication: the ciphertext was modified,
// truncated, or decrypted with the wrong key.
var ErrAuth = errors.New("age payload chunk failed authentication")

// ChunkCount returns the number of chunks of a payload of plainSize bytes.
// An empty payload has one (empty, final) chunk.
func ChunkCount(plainSize int64) int64 {
	if plainSize <= 0 {
		return 1
	}
	return (plainSize + ChunkSize - 1) / ChunkSize
}

// CiphertextSize returns the size of the encrypted payload (without header and
// nonce) for plainSize bytes of plaintext.
func CiphertextSize(plainSize int64) int64 {
	return plainSize + ChunkCount(plainSize)*TagSize
}

// PlaintextSize returns the plaintext size of an encrypted payload of
// cipherSize bytes, or an error if no plaintext has that encrypted size.
func PlaintextSize(cipherSize int64) (int64, error) {
	if cipherSize < TagSize {
		return 0, fmt.Errorf("encrypted payload of %d bytes is shorter than one tag", cipherSize)
	}
	chunks := (cipherSize + EncChunkSize - 1) / EncChunkSize
	plain := cipherSize - chunks*TagSize
	if CiphertextSize(plain) != cipherSize {
		return 0, fmt.Errorf("no plaintext encrypts to a payload of %d bytes", cipherSize)
	}
	return plain, nil
}

// Range returns the byte range of the encrypted payload (offset relative to
// the payload start, that is after header and nonce) holding the plaintext
// bytes [off, off+n) of a payload of plainSize bytes, and the index of the
// first chunk in that range. n == 0 selects the chunk that holds off (a
// zero-length read still authenticates something).
func Range(off, n, plainSize int64) (cipherOff, cipherLen, firstChunk int64, err error) {
	if plainSize < 0 || plainSize/ChunkSize >= maxChunks || n > plainSize {
		return 0, 0, 0, fmt.Errorf("range %d+%d of a payload of %d bytes", off, n, plainSize)
	}
	if off < 0 || n < 0 || off+n > plainSize || (n == 0 && off > plainSize) {
		return 0, 0, 0, fmt.Errorf("range %d+%d outside payload of %d bytes", off, n, plainSize)
	}
	last := ChunkCount(plainSize) - 1
	first := min(off/ChunkSize, last)
	end := first
	if n > 0 {
		end = (off + n - 1) / ChunkSize
	}
	cipherOff = first * EncChunkSize
	cipherEnd := min((end+1)*EncChunkSize, CiphertextSize(plainSize))
	return cipherOff, cipherEnd - cipherOff, first, nil
}

// Key decrypts chunks of one age payload. It is safe for concurrent use.
type Key struct {
	aead cipher.AEAD
}

// PayloadKey derives the payload key from an age file key and the nonce that
// follows the header.
func PayloadKey(fileKey, nonce []byte) ([KeySize]byte, error) {
	var k [KeySize]byte
	if len(fileKey) != fileKeySize || len(nonce) != NonceSize {
		return k, fmt.Errorf("age file key of %d bytes and nonce of %d bytes: want %d and %d",
			len(fileKey), len(nonce), fileKeySize, NonceSize)
	}
	b, err := hkdf.Key(sha256.New, fileKey, nonce, "payload", KeySize)
	if err != nil {
		return k, err
	}
	copy(k[:], b)
	return k, nil
}

// NewKey returns a chunk decrypter for a payload key.
func NewKey(payloadKey [KeySize]byte) *Key {
	aead, err := chacha20poly1305.New(payloadKey[:])
	if err != nil {
		panic("agestream: chacha20poly1305 with a 32-byte key: " + err.Error()) // cannot happen
	}
	return &Key{aead: aead}
}

func chunkNonce(i int64, last bool) [chacha20poly1305.NonceSize]byte {
	var n [chacha20poly1305.NonceSize]byte
	// 11-byte big-endian counter: the top 3 bytes of a uint64 never matter
	// below maxChunks, so write it into bytes 3..10.
	binary.BigEndian.PutUint64(n[3:11], uint64(i))
	if last {
		n[11] = 1
	}
	return n
}

// DecryptChunks decrypts ciphertext, which must be whole consecutive chunks
// starting at chunk index first of a payload of plainSize bytes, as returned
// by Range, and appends the plaintext to dst.
func (k *Key) DecryptChunks(dst, ciphertext []byte, first, plainSize int64) ([]byte, error) {
	if plainSize < 0 || plainSize/ChunkSize >= maxChunks {
		return dst, fmt.Errorf("payload size %d out of range", plainSize)
	}
	last := ChunkCount(plainSize) - 1
	if first < 0 || first > last {
		return dst, fmt.Errorf("chunk %d outside payload of %d chunks", first, last+1)
	}
	for i := first; len(ciphertext) > 0 || i == first; i++ {
		if i > last {
			return dst, fmt.Errorf("%d bytes of ciphertext past the final chunk", len(ciphertext))
		}
		want := int64(EncChunkSize)
		if i == last {
			want = plainSize - last*ChunkSize + TagSize
		}
		if int64(len(ciphertext)) < want {
			return dst, fmt.Errorf("chunk %d: %d bytes of ciphertext, want %d: %w",
				i, len(ciphertext), want, io.ErrUnexpectedEOF)
		}
		nonce := chunkNonce(i, i == last)
		var err error
		dst, err = k.aead.Open(dst, nonce[:], ciphertext[:want], nil)
		if err != nil {
			return dst, fmt.Errorf("chunk %d: %w", i, ErrAuth)
		}
		ciphertext = ciphertext[want:]
	}
	return dst, nil
}

// DecryptInPlace is DecryptChunks that writes the plaintext over the
// ciphertext (saving an allocation and a copy per read) and returns it as a
// prefix of ciphertext.
func (k *Key) DecryptInPlace(ciphertext []byte, first, plainSize int64) ([]byte, error) {
	if plainSize < 0 || plainSize/ChunkSize >= maxChunks {
		return nil, fmt.Errorf("payload size %d out of range", plainSize)
	}
	last := ChunkCount(plainSize) - 1
	if first < 0 || first > last {
		return nil, fmt.Errorf("chunk %d outside payload of %d chunks", first, last+1)
	}
	in, out := 0, 0
	for i := first; in < len(ciphertext) || i == first; i++ {
		if i > last {
			return nil, fmt.Errorf("%d bytes of ciphertext past the final chunk", len(ciphertext)-in)
		}
		want := EncChunkSize
		if i == last {
			want = int(plainSize-last*ChunkSize) + TagSize
		}
		if len(ciphertext)-in < want {
			return nil, fmt.Errorf("chunk %d: %d bytes of ciphertext, want %d: %w",
				i, len(ciphertext)-in, want, io.ErrUnexpectedEOF)
		}
		nonce := chunkNonce(i, i == last)
		c := ciphertext[in : in+want]
		plain, err := k.aead.Open(c[:0], nonce[:], c, nil)
		if err != nil {
			return nil, fmt.Errorf("chunk %d: %w", i, ErrAuth)
		}
		// Close the tag gaps: plaintext chunk j moves left by j tags.
		out += copy(ciphertext[out:], plain)
		in += want
	}
	return ciphertext[:out], nil
}

// Info describes an age file written by Encrypt.
type Info struct {
	PayloadKey    [KeySize]byte // HKDF of the file key and nonce
	PayloadOffset int64         // bytes of header and nonce before the payload
}

// Encrypt starts an ordinary age file to the recipients on dst, like
// age.Encrypt, and also returns its payload key and payload offset so that
// the file can later be read by chunk without unwrapping the header.
func Encrypt(dst io.Writer, recipients ...age.Recipient) (io.WriteCloser, Info, error) {
	var info Info
	w, fileKey, head, err := start(dst, recipients)
	if err != nil {
		return nil, info, err
	}
	info.PayloadOffset = int64(len(head))
	info.PayloadKey, err = PayloadKey(fileKey, head[len(head)-NonceSize:])
	if err != nil {
		return nil, info, err
	}
	return w, info, nil
}

// start begins an age file to the recipients on dst and returns age's
// writer with the file key it drew and the bytes it wrote before the
// payload: the header and the nonce.
func start(dst io.Writer, recipients []age.Recipient) (w io.WriteCloser, fileKey, head []byte, err error) {
	wrapped := make([]age.Recipient, len(recipients))
	for i, r := range recipients {
		wrapped[i] = &captureRecipient{inner: r, fileKey: &fileKey}
	}
	rec := &recordWriter{dst: dst}
	if w, err = age.Encrypt(rec, wrapped...); err != nil {
		return nil, nil, nil, err
	}
	// age.Encrypt writes the header and the nonce before it returns.
	if len(rec.buf) < NonceSize || len(fileKey) != fileKeySize {
		return nil, nil, nil, errors.New("age: header or file key not observed")
	}
	head = rec.buf
	rec.done, rec.buf = true, nil
	return w, fileKey, head, nil
}

type recordWriter struct {
	dst  io.Writer
	buf  []byte
	done bool
}

func (w *recordWriter) Write(p []byte) (int, error) {
	if !w.done {
		w.buf = append(w.buf, p...)
	}
	return w.dst.Write(p)
}

// captureRecipient observes the file key age passes to each recipient; it
// forwards labels so that post-quantum recipients keep their mixing rules.
type captureRecipient struct {
	inner   age.Recipient
	fileKey *[]byte
}

func (c *captureRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	s, _, err := c.WrapWithLabels(fileKey)
	return s, err
}

func (c *captureRecipient) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	*c.fileKey = append((*c.fileKey)[:0], fileKey...)
	if l, ok := c.inner.(age.RecipientWithLabels); ok {
		return l.WrapWithLabels(fileKey)
	}
	s, err := c.inner.Wrap(fileKey)
	return s, nil, err
}

// MaxHeaderPrefix is how many leading bytes of an age file OpenHeader needs at
// most for the files tidemark writes (a few recipients of at most ~1.6 KiB).
const MaxHeaderPrefix = 64 << 10

// ErrShortHeader means the prefix given to OpenHeader ended inside the header.
var ErrShortHeader = errors.New("age header extends past the bytes read")

// OpenHeader parses the header at the start of prefix (the first bytes of an
// age file), unwraps the file key with the identities and returns the payload
// key and offset. whole says that prefix is the entire file. When it is not
// and the header cannot be parsed (or the nonce is not complete), the error
// matches ErrShortHeader and the caller may retry with more bytes.
func OpenHeader(prefix []byte, whole bool, identities ...age.Identity) (Info, error) {
	var info Info
	hdr, err := age.ExtractHeader(bytes.NewReader(prefix))
	if err != nil {
		if !whole {
			return info, fmt.Errorf("%w: %w", ErrShortHeader, err)
		}
		return info, err
	}
	// The re-marshalled header equals the original for every canonically
	// encoded file (all that age writes); anything else is rejected.
	if !bytes.HasPrefix(prefix, hdr) {
		return info, errors.New("age header is not canonically encoded")
	}
	if len(prefix) < len(hdr)+NonceSize {
		if whole {
			return info, fmt.Errorf("age file of %d bytes ends inside the nonce", len(prefix))
		}
		return info, ErrShortHeader
	}
	fileKey, err := age.DecryptHeader(hdr, identities...)
	if err != nil {
		return info, err
	}
	info.PayloadOffset = int64(len(hdr) + NonceSize)
	info.PayloadKey, err = PayloadKey(fileKey, prefix[len(hdr):len(hdr)+NonceSize])
	return info, err
}

// AppendWriter writes an age payload into a byte slice, sealing each chunk
// in place so that the plaintext is copied once (age's own writer copies it
// into a chunk buffer and again into the destination). Its output is
// byte-for-byte an age STREAM payload; tests check it against age.Decrypt.
type AppendWriter struct {
	aead   cipher.AEAD
	buf    *[]byte
	base   int   // offset of the payload in *buf
	chunk  int64 // index of the chunk being filled
	fill   int   // plaintext bytes in that chunk (the tail of *buf)
	closed bool
}

// NewAppendWriter starts a payload at the end of *buf under the payload key.
func NewAppendWriter(buf *[]byte, payloadKey [KeySize]byte) *AppendWriter {
	aead, err := chacha20poly1305.New(payloadKey[:])
	if err != nil {
		panic("agestream: chacha20poly1305 with a 32-byte key: " + err.Error()) // cannot happen
	}
	return &AppendWriter{aead: aead, buf: buf, base: len(*buf)}
}

// Write appends plaintext. A chunk is sealed only when more data follows
// it, because the final chunk carries the last-chunk flag.
func (w *AppendWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("agestream: write after close")
	}
	n := len(p)
	for len(p) > 0 {
		if w.fill == ChunkSize {
			w.seal(false)
		}
		m := min(len(p), ChunkSize-w.fill)
		*w.buf = append(*w.buf, p[:m]...)
		w.fill += m
		p = p[m:]
	}
	return n, nil
}

func (w *AppendWriter) seal(last bool) {
	if w.chunk >= maxChunks {
		panic("agestream: payload too large")
	}
	start := len(*w.buf) - w.fill
	if cap(*w.buf)-len(*w.buf) < TagSize {
		*w.buf = append(*w.buf, make([]byte, TagSize)...)[:len(*w.buf)]
	}
	b := *w.buf
	nonce := chunkNonce(w.chunk, last)
	sealed := w.aead.Seal(b[start:start], nonce[:], b[start:start+w.fill], nil)
	*w.buf = b[:start+len(sealed)]
	w.chunk++
	w.fill = 0
}

// Close seals the final chunk.
func (w *AppendWriter) Close() error {
	if w.closed {
		return nil
	}
	w.seal(true)
	w.closed = true
	return nil
}

// Header writes an age header and nonce for recipients to the end of *buf
// and returns the payload key and the payload offset relative to where the
// header started; continue with NewAppendWriter(buf, info.PayloadKey).
func Header(buf *[]byte, recipients ...age.Recipient) (Info, error) {
	start := len(*buf)
	// age's own writer is dropped unused: nothing is buffered in it yet.
	_, info, err := Encrypt(sliceWriter{buf}, recipients...)
	if err != nil {
		return info, err
	}
	info.PayloadOffset = int64(len(*buf) - start)
	return info, nil
}

type sliceWriter struct{ b *[]byte }

func (s sliceWriter) Write(p []byte) (int, error) {
	*s.b = append(*s.b, p...)
	return len(p), nil
}

// Session writes age files that share one header: the file key is drawn
// and wrapped to the recipients once, and each file gets its own random
// nonce after that header, so its own payload key (HKDF of the file key
// and the nonce). Every file is an ordinary age file that age -d reads.
// Wrapping a file key to a post-quantum recipient (ML-KEM-768 with
// X25519) costs a few hundred microseconds of CPU: a writer of many small
// objects (a WAL receiver's pieces, a few KiB each, hundreds a second)
// spent a fifth of its CPU on it. The file key stays in memory for the
// session's life; callers bound how many files share it.
type Session struct {
	header  []byte // the age header, up to and including its MAC line
	fileKey []byte
}

// NewSession draws a file key and wraps it to the recipients.
func NewSession(recipients ...age.Recipient) (*Session, error) {
	// age's writer is dropped unused: nothing is buffered in it yet.
	_, fileKey, head, err := start(io.Discard, recipients)
	if err != nil {
		return nil, err
	}
	return &Session{header: head[:len(head)-NonceSize], fileKey: fileKey}, nil
}

// Encrypt starts an age file on dst under the session's header with a
// fresh nonce; the caller writes the plaintext and closes the writer,
// which writes the file to dst (it is held in memory until then).
func (s *Session) Encrypt(dst io.Writer) (io.WriteCloser, error) {
	buf := make([]byte, 0, len(s.header)+NonceSize+4096)
	buf = append(buf, s.header...)
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	buf = append(buf, nonce...)
	key, err := PayloadKey(s.fileKey, nonce)
	if err != nil {
		return nil, err
	}
	w := &sessionWriter{dst: dst, buf: buf}
	w.aw = NewAppendWriter(&w.buf, key)
	return w, nil
}

type sessionWriter struct {
	dst io.Writer
	buf []byte
	aw  *AppendWriter
}

func (w *sessionWriter) Write(p []byte) (int, error) { return w.aw.Write(p) }

func (w *sessionWriter) Close() error {
	if w.aw.closed {
		return nil
	}
	if err := w.aw.Close(); err != nil {
		return err
	}
	_, err := w.dst.Write(w.buf)
	return err
}
