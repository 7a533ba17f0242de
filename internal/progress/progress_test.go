package progress

import (
	"strings"
	"testing"
	"time"
)

func TestReportString(t *testing.T) {
	r := Report{Phase: "fetch", Done: 1 << 30, Total: 4 << 30, Rate: 100 << 20, ETA: 31 * time.Second}
	if got, want := r.String(), "fetch  25.0% 1.0 GiB of 4.0 GiB, 100.0 MiB/s, eta 31s"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	r = Report{Phase: "mark", Unit: "snapshots", Done: 3, Total: 10}
	if got := r.String(); !strings.HasPrefix(got, "mark  30.0% 3 snapshots of 10 snapshots") || strings.Contains(got, "/s") {
		t.Errorf("String() = %q", got)
	}
	r = Report{Phase: "recovery", Elapsed: 12 * time.Second}
	if got := r.String(); got != "recovery (12s)" {
		t.Errorf("String() = %q", got)
	}
}

func TestCounter(t *testing.T) {
	var nilc *Counter
	nilc.Phase("x", 1, "")
	nilc.Add(1) // a nil counter counts nothing, and does not panic
	c := NewCounter()
	c.Phase("read", 100, "")
	c.Add(40)
	if r := c.Report(); r.Done != 40 || r.Total != 100 || r.Phase != "read" {
		t.Errorf("report %+v", r)
	}
	c.Phase("write", 0, "files")
	if r := c.Report(); r.Done != 0 || r.Unit != "files" {
		t.Errorf("a new phase counts from zero: %+v", r)
	}
	var got []Report
	stop := Watch(c, time.Hour, func(r Report) { got = append(got, r) })
	stop()
	stop()
	if len(got) != 1 || !got[0].Final {
		t.Errorf("stop reports once, final: %+v", got)
	}
}
