package storage

import "io"

// Unmetered returns the reader beneath r when r meters the bytes read
// through it (storage/ratelimit paces an upload's body by them), for a pass
// over an upload's body that sends nothing, such as a backend's checksum
// pass: only the bytes that go over the wire should count. Any other r is
// returned as it is.
func Unmetered(r io.ReaderAt) io.ReaderAt {
	if m, ok := r.(interface{ Unmetered() io.ReaderAt }); ok {
		return m.Unmetered()
	}
	return r
}
