// Package bytesize formats byte counts for people, the same way in every
// command's output and report.
package bytesize

import "fmt"

// Format returns n in the largest binary unit that keeps it at least 1:
// "512 B", "1.5 KiB", "20.0 MiB", "1.25 GiB".
func Format(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
