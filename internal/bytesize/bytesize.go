// Package bytesize is the one reading and writing of byte counts in
// tidemark: Parse for every size flag and setting, Format for every
// command's output and report.
package bytesize

import "fmt"

// Format returns n in the largest binary unit that keeps it at least 1,
// with one decimal: "512 B", "1.5 KiB", "20.0 MiB", "2.5 GiB", "3.0 TiB".
func Format(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
