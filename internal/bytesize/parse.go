package bytesize

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// units are the suffixes Parse knows. Every one is a power of 1024, as
// PostgreSQL reads them in postgresql.conf ("1MB" is 1048576 bytes there
// too): the people who set these flags also set shared_buffers, and one
// meaning per spelling is what matters.
var units = []struct {
	suffix string
	mul    int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1 << 10}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
	{"k", 1 << 10}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// Parse reads a size: a number of bytes, or a number (a fraction is
// allowed) followed by a unit, optionally after a space: B; K, k, KB, kB,
// KiB; M, MB, MiB; G, GB, GiB; T, TB, TiB. All units are powers of 1024
// (1MB = 1MiB = 1048576 bytes), as in postgresql.conf.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mul := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mul = strings.TrimSpace(rest), u.mul
			break
		}
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil && n >= 0 {
		if n > math.MaxInt64/mul {
			return 0, fmt.Errorf("size %q is too large", s)
		}
		return n * mul, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || f*float64(mul) >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is not a size: want bytes or a number with a unit, e.g. 256MiB (units are powers of 1024)", s)
	}
	return int64(f * float64(mul)), nil
}
