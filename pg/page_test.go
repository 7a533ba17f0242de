package pg

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// referenceChecksum is checksum_impl.h transcribed as literally as possible,
// to check the unrolled implementation against.
func referenceChecksum(page []byte, blkno uint32) uint16 {
	p := make([]byte, len(page))
	copy(p, page)
	p[8], p[9] = 0, 0
	sums := checksumBaseOffsets
	comp := func(c *uint32, v uint32) {
		t := *c ^ v
		*c = t*fnvPrime ^ (t >> 17)
	}
	rows := len(p) / (4 * nSums)
	for i := 0; i < rows; i++ {
		for j := 0; j < nSums; j++ {
			comp(&sums[j], binary.LittleEndian.Uint32(p[(i*nSums+j)*4:]))
		}
	}
	for i := 0; i < 2; i++ {
		for j := 0; j < nSums; j++ {
			comp(&sums[j], 0)
		}
	}
	var r uint32
	for _, s := range sums {
		r ^= s
	}
	r ^= blkno
	return uint16(r%65535 + 1)
}

type relFixture struct {
	Path  string `json:"path"`
	Pages int    `json:"pages"`
}

func readRelFixture(t testing.TB, major int) ([]byte, relFixture) {
	t.Helper()
	dir := filepath.Join("testdata", fmt.Sprintf("pg%d", major))
	pages, err := os.ReadFile(filepath.Join(dir, "rel.pages"))
	if err != nil {
		t.Fatal(err)
	}
	var meta relFixture
	b, err := os.ReadFile(filepath.Join(dir, "rel.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	if len(pages) != meta.Pages*DefaultBlockSize {
		t.Fatalf("rel.pages is %d bytes, want %d pages", len(pages), meta.Pages)
	}
	return pages, meta
}

var fixtureMajors = []int{15, 16, 17, 18}

func TestPageChecksumFixtures(t *testing.T) {
	for _, major := range fixtureMajors {
		pages, meta := readRelFixture(t, major)
		for blk := 0; blk < meta.Pages; blk++ {
			page := pages[blk*DefaultBlockSize : (blk+1)*DefaultBlockSize]
			h, err := ParsePageHeader(page)
			if err != nil {
				t.Fatal(err)
			}
			if h.PageSize() != DefaultBlockSize || h.LayoutVersion() != PageLayoutVersion {
				t.Errorf("pg%d block %d: page size/version %d/%d", major, blk, h.PageSize(), h.LayoutVersion())
			}
			if !h.LSN.IsValid() {
				t.Errorf("pg%d block %d: pd_lsn is 0", major, blk)
			}
			if got := PageChecksum(page, uint32(blk)); got != h.Checksum {
				t.Errorf("pg%d block %d: PageChecksum = %d, stored %d", major, blk, got, h.Checksum)
			}
			if got := referenceChecksum(page, uint32(blk)); got != h.Checksum {
				t.Errorf("pg%d block %d: reference checksum = %d, stored %d", major, blk, got, h.Checksum)
			}
			if err := VerifyPage(page, uint32(blk), true); err != nil {
				t.Errorf("pg%d block %d: %v", major, blk, err)
			}
			// The block number is mixed in: the same page elsewhere fails.
			err = VerifyPage(page, uint32(blk)+1, true)
			var ce *PageChecksumError
			if !errors.As(err, &ce) || ce.Block != uint32(blk)+1 || ce.Stored != h.Checksum {
				t.Errorf("pg%d block %d moved: err = %v, want a checksum error", major, blk, err)
			}
		}
	}
}

func TestPageChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{1024, 4096, 8192, 16384, 32768} {
		page := make([]byte, size)
		for i := 0; i < 50; i++ {
			for j := range page {
				page[j] = byte(r.Uint32())
			}
			blk := r.Uint32()
			if got, want := PageChecksum(page, blk), referenceChecksum(page, blk); got != want {
				t.Fatalf("size %d: PageChecksum = %d, reference %d", size, got, want)
			}
		}
	}
}

func TestVerifyPageCorruption(t *testing.T) {
	pages, _ := readRelFixture(t, 18)
	good := pages[:DefaultBlockSize]
	mutate := func(f func(p []byte)) []byte {
		p := append([]byte(nil), good...)
		f(p)
		return p
	}
	le := binary.LittleEndian
	tests := []struct {
		name      string
		page      []byte
		checksums bool
		want      string // "" ok, "checksum", "header"
	}{
		{"intact", good, true, ""},
		{"bit flip in data", mutate(func(p []byte) { p[5000] ^= 1 }), true, "checksum"},
		{"bit flip without checksums", mutate(func(p []byte) { p[5000] ^= 1 }), false, ""},
		{"last byte", mutate(func(p []byte) { p[len(p)-1]++ }), true, "checksum"},
		{"stored checksum changed", mutate(func(p []byte) { p[8]++ }), true, "checksum"},
		{"zeroed tail", mutate(func(p []byte) { clear(p[4096:]) }), true, "checksum"},
		{"bad flags", mutate(func(p []byte) { le.PutUint16(p[10:], 0x80) }), false, "header"},
		{"lower above upper", mutate(func(p []byte) { le.PutUint16(p[12:], 9000) }), false, "header"},
		{"upper above special", mutate(func(p []byte) { le.PutUint16(p[14:], 8190); le.PutUint16(p[16:], 8184) }), false, "header"},
		{"special beyond page", mutate(func(p []byte) { le.PutUint16(p[16:], 8200) }), false, "header"},
		{"special unaligned", mutate(func(p []byte) { le.PutUint16(p[16:], 8190) }), false, "header"},
		{"all zero new page", make([]byte, DefaultBlockSize), true, ""},
		{"new page with junk", mutate(func(p []byte) { le.PutUint16(p[14:], 0) }), true, "header"},
		{"short", good[:100], true, "header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyPage(tt.page, 0, tt.checksums)
			var ce *PageChecksumError
			var he *PageHeaderError
			switch tt.want {
			case "":
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
			case "checksum":
				if !errors.As(err, &ce) {
					t.Fatalf("err = %v, want *PageChecksumError", err)
				}
			case "header":
				if !errors.As(err, &he) {
					t.Fatalf("err = %v, want *PageHeaderError", err)
				}
			}
			if err != nil && !errors.Is(err, ErrPageInvalid) {
				t.Errorf("%v does not match ErrPageInvalid", err)
			}
		})
	}
}

func TestPageHelpers(t *testing.T) {
	pages, _ := readRelFixture(t, 15)
	h, _ := ParsePageHeader(pages)
	if PageLSN(pages) != h.LSN || PageIsNew(pages) || PageIsZero(pages) {
		t.Errorf("helpers disagree on a real page: %+v", h)
	}
	zero := make([]byte, 8192)
	if !PageIsNew(zero) || !PageIsZero(zero) {
		t.Error("zero page is not new and zero")
	}
	zero[8191] = 1
	if PageIsZero(zero) {
		t.Error("PageIsZero missed the last byte")
	}
	zero[8191], zero[70] = 0, 1
	if PageIsZero(zero) {
		t.Error("PageIsZero missed a byte in the middle")
	}
	if _, err := ParsePageHeader(zero[:10]); !errors.Is(err, ErrShortPage) {
		t.Errorf("short header: %v", err)
	}
	if got := RelationBlock(2, 5, DefaultRelSegSize); got != 2*131072+5 {
		t.Errorf("RelationBlock = %d", got)
	}
	// pd_lsn is two 32-bit halves, high first.
	p := make([]byte, 24)
	binary.LittleEndian.PutUint32(p[0:], 0x16)
	binary.LittleEndian.PutUint32(p[4:], 0xB374D848)
	if PageLSN(p) != 0x16_B374D848 {
		t.Errorf("PageLSN = %s", PageLSN(p))
	}
}

func TestPageChecksumPanicsOnBadLength(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a 100-byte page")
		}
	}()
	PageChecksum(make([]byte, 100), 0)
}

func TestVerifyPageDoesNotAllocate(t *testing.T) {
	pages, _ := readRelFixture(t, 17)
	page := pages[:DefaultBlockSize]
	if n := testing.AllocsPerRun(100, func() {
		if VerifyPage(page, 0, true) != nil {
			t.Fatal("fixture page fails")
		}
	}); n != 0 {
		t.Errorf("VerifyPage allocates %v times per page", n)
	}
}

func FuzzVerifyPage(f *testing.F) {
	pages, _ := readRelFixture(f, 16)
	f.Add(pages[:DefaultBlockSize], uint32(0))
	f.Add(make([]byte, DefaultBlockSize), uint32(7))
	f.Add([]byte{1, 2, 3}, uint32(0))
	f.Fuzz(func(t *testing.T, page []byte, blk uint32) {
		err := VerifyPage(page, blk, true)
		if len(page) >= rowBytes && len(page)%rowBytes == 0 {
			if got, want := PageChecksum(page, blk), referenceChecksum(page, blk); got != want {
				t.Fatalf("PageChecksum = %d, reference %d", got, want)
			}
		}
		if err != nil && !errors.Is(err, ErrPageInvalid) {
			t.Fatalf("error %v does not match ErrPageInvalid", err)
		}
		_, _ = ParsePageHeader(page)
	})
}

func BenchmarkPageChecksum(b *testing.B) {
	pages, _ := readRelFixture(b, 18)
	page := pages[:DefaultBlockSize]
	b.SetBytes(DefaultBlockSize)
	b.ReportAllocs()
	var sink uint16
	for b.Loop() {
		sink += PageChecksum(page, 1)
	}
	_ = sink
}

func BenchmarkVerifyPage(b *testing.B) {
	pages, _ := readRelFixture(b, 18)
	page := pages[:DefaultBlockSize]
	b.SetBytes(DefaultBlockSize)
	b.ReportAllocs()
	for b.Loop() {
		if VerifyPage(page, 0, true) != nil {
			b.Fatal("fixture page fails")
		}
	}
}

func BenchmarkPageIsZero(b *testing.B) {
	page := make([]byte, DefaultBlockSize)
	b.SetBytes(DefaultBlockSize)
	for b.Loop() {
		if !PageIsZero(page) {
			b.Fatal("not zero")
		}
	}
}

func TestErrorMessages(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&PageChecksumError{Block: 7, Stored: 1, Computed: 2}, "page 7: checksum mismatch: stored 1, computed 2"},
		{&PageHeaderError{Block: 3, Reason: "pd_lower 9 is above pd_upper 1"}, "page 3: pd_lower 9 is above pd_upper 1"},
		{&ControlCRCError{Version: 1700, Stored: 0xAB, Computed: 0xCD}, "pg_control (version 1700) is corrupt: stored CRC 000000AB, computed 000000CD"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	if PageIsZero([]byte{0, 0, 1}) || !PageIsZero(make([]byte, 70)) {
		t.Error("PageIsZero on short input")
	}
}

func TestPageAllVisible(t *testing.T) {
	page := make([]byte, DefaultBlockSize)
	binary.LittleEndian.PutUint16(page[16:], DefaultBlockSize) // heap: no special space
	if PageAllVisible(page) {
		t.Fatal("flag clear, reported set")
	}
	binary.LittleEndian.PutUint16(page[10:], 0x0004|0x0002)
	if !PageAllVisible(page) {
		t.Fatal("PD_ALL_VISIBLE set, reported clear")
	}
	binary.LittleEndian.PutUint16(page[16:], DefaultBlockSize-16) // an index page's special space
	if PageAllVisible(page) {
		t.Fatal("a page with special space is no heap page")
	}
	if n := VMHeapBlocksPerPage(DefaultBlockSize); n != 32672 {
		t.Fatalf("heap blocks per map page %d, want 32672 (HEAPBLOCKS_PER_PAGE)", n)
	}
}
