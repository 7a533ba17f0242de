package agestream

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"filippo.io/age"
)

func encrypt(t testing.TB, plain []byte, r age.Recipient) ([]byte, Info) {
	t.Helper()
	var buf bytes.Buffer
	w, info, err := Encrypt(&buf, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), info
}

// TestAgreesWithAge checks chunk-range decryption against age.Decrypt for
// payloads around chunk boundaries and every interesting offset and length.
func TestAgreesWithAge(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 2 * ChunkSize, 2*ChunkSize + 17, 3*ChunkSize - 1}
	for _, size := range sizes {
		plain := make([]byte, size)
		rand.Read(plain)
		file, info := encrypt(t, plain, id.Recipient())

		// The stock library decrypts what Encrypt wrote.
		r, err := age.Decrypt(bytes.NewReader(file), id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: age.Decrypt disagrees: %v", size, err)
		}
		// OpenHeader recovers the same payload key from the file.
		hinfo, err := OpenHeader(file, true, id)
		if err != nil || hinfo != info {
			t.Fatalf("size %d: OpenHeader = %+v, %v; want %+v", size, hinfo, err, info)
		}
		if n, err := PlaintextSize(int64(len(file)) - info.PayloadOffset); err != nil || n != int64(size) {
			t.Fatalf("size %d: PlaintextSize = %d, %v", size, n, err)
		}

		payload := file[info.PayloadOffset:]
		key := NewKey(info.PayloadKey)
		points := []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 2*ChunkSize - 1, 2 * ChunkSize, size - 1, size}
		for _, off := range points {
			for _, end := range points {
				if off < 0 || end < off || end > size {
					continue
				}
				co, cl, first, err := Range(int64(off), int64(end-off), int64(size))
				if err != nil {
					t.Fatalf("size %d range %d-%d: %v", size, off, end, err)
				}
				dec, err := key.DecryptChunks(nil, payload[co:co+cl], first, int64(size))
				if err != nil {
					t.Fatalf("size %d range %d-%d: %v", size, off, end, err)
				}
				rel := int64(off) - first*ChunkSize
				if !bytes.Equal(dec[rel:rel+int64(end-off)], plain[off:end]) {
					t.Fatalf("size %d range %d-%d: plaintext differs", size, off, end)
				}
				inPlace, err := key.DecryptInPlace(bytes.Clone(payload[co:co+cl]), first, int64(size))
				if err != nil || !bytes.Equal(inPlace, dec) {
					t.Fatalf("size %d range %d-%d: in-place decryption differs: %v", size, off, end, err)
				}
			}
		}
	}
}

func TestTamperAndTruncation(t *testing.T) {
	id, _ := age.GenerateHybridIdentity()
	plain := make([]byte, 3*ChunkSize+5)
	rand.Read(plain)
	file, info := encrypt(t, plain, id.Recipient())
	payload := file[info.PayloadOffset:]
	key := NewKey(info.PayloadKey)
	size := int64(len(plain))

	bad := bytes.Clone(payload)
	bad[ChunkSize+100] ^= 1
	if _, err := key.DecryptChunks(nil, bad, 0, size); !errors.Is(err, ErrAuth) {
		t.Fatalf("flipped byte: %v", err)
	}
	// A truncated final chunk is reported, not silently short.
	if _, err := key.DecryptChunks(nil, payload[:len(payload)-1], 0, size); err == nil {
		t.Fatal("truncated payload decrypted")
	}
	// A full chunk presented as the last one (truncation at a chunk edge)
	// fails because of the last-chunk flag.
	if _, err := key.DecryptChunks(nil, payload[:EncChunkSize], 0, ChunkSize); !errors.Is(err, ErrAuth) {
		t.Fatalf("chunk-edge truncation: %v", err)
	}
	if _, err := OpenHeader(file[:50], false, id); !errors.Is(err, ErrShortHeader) {
		t.Fatalf("short header: %v", err)
	}
	other, _ := age.GenerateHybridIdentity()
	var nm *age.NoIdentityMatchError
	if _, err := OpenHeader(file, true, other); !errors.As(err, &nm) {
		t.Fatalf("wrong identity: %v", err)
	}
}

func FuzzDecryptChunks(f *testing.F) {
	var k [KeySize]byte
	key := NewKey(k)
	f.Add([]byte("hello"), int64(0), int64(5))
	f.Fuzz(func(t *testing.T, ct []byte, first, size int64) {
		key.DecryptChunks(nil, ct, first, size) // must not panic
		key.DecryptInPlace(ct, first, size)
		PlaintextSize(size)
		Range(first, size, size)
	})
}

func FuzzOpenHeader(f *testing.F) {
	id, _ := age.GenerateX25519Identity()
	var buf bytes.Buffer
	w, _, _ := Encrypt(&buf, id.Recipient())
	w.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		OpenHeader(b, true, id)
		OpenHeader(b, false, id)
	})
}

func BenchmarkDecryptChunks(b *testing.B) {
	id, _ := age.GenerateX25519Identity()
	plain := make([]byte, 1<<20)
	file, info := encrypt(b, plain, id.Recipient())
	key := NewKey(info.PayloadKey)
	payload := file[info.PayloadOffset:]
	dst := make([]byte, 0, len(plain))
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		if _, err := key.DecryptChunks(dst, payload, 0, int64(len(plain))); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAppendWriterIsAge checks that AppendWriter's output is an age file
// that age.Decrypt reads, for every size around chunk edges and for writes
// of every granularity.
func TestAppendWriterIsAge(t *testing.T) {
	id, _ := age.GenerateHybridIdentity()
	for _, size := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 7} {
		for _, step := range []int{1000, ChunkSize, 5 * ChunkSize} {
			plain := make([]byte, size)
			rand.Read(plain)
			buf := make([]byte, 0, 16)
			info, err := Header(&buf, id.Recipient())
			if err != nil {
				t.Fatal(err)
			}
			w := NewAppendWriter(&buf, info.PayloadKey)
			for off := 0; off < size; off += step {
				w.Write(plain[off:min(off+step, size)])
			}
			w.Close()
			r, err := age.Decrypt(bytes.NewReader(buf), id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("size %d step %d: %v", size, step, err)
			}
			if int64(len(buf)) != info.PayloadOffset+CiphertextSize(int64(size)) {
				t.Fatalf("size %d: %d bytes", size, len(buf))
			}
		}
	}
}

// TestSessionFilesAreAge checks that files sharing a session's header are
// ordinary age files, each with its own nonce (so its own payload key), and
// that OpenHeader recovers each one's payload key.
func TestSessionFilesAreAge(t *testing.T) {
	id, _ := age.GenerateHybridIdentity()
	s, err := NewSession(id.Recipient())
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, 3*ChunkSize+5)
	rand.Read(plain)
	var files [][]byte
	for _, size := range []int{0, 1, 4000, ChunkSize, len(plain), 4000} {
		var buf bytes.Buffer
		buf.WriteString("prefix")
		w, err := s.Encrypt(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plain[:size])
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		f := bytes.TrimPrefix(buf.Bytes(), []byte("prefix"))
		r, err := age.Decrypt(bytes.NewReader(f), id)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, plain[:size]) {
			t.Fatalf("size %d: %v", size, err)
		}
		info, err := OpenHeader(f, true, id)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(f)) != info.PayloadOffset+CiphertextSize(int64(size)) {
			t.Fatalf("size %d: %d bytes", size, len(f))
		}
		files = append(files, f)
	}
	// The header is shared, the nonce is not: two files of the same 4000
	// bytes differ.
	a, b := files[2], files[5]
	hdr := len(s.header)
	if !bytes.Equal(a[:hdr], b[:hdr]) {
		t.Fatal("files of one session have different headers")
	}
	if bytes.Equal(a[hdr:hdr+NonceSize], b[hdr:hdr+NonceSize]) || bytes.Equal(a, b) {
		t.Fatal("two files of one session share a nonce")
	}
	other, _ := age.GenerateHybridIdentity()
	if _, err := age.Decrypt(bytes.NewReader(a), other); err == nil {
		t.Fatal("decrypted with another identity")
	}
}
