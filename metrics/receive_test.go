package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/wal"
)

// TestReceive: a receiver's status becomes its gauges, in the textfile
// form and at the endpoint; a slot that could not be read is no
// slot_active series rather than a false 0.
func TestReceive(t *testing.T) {
	st := wal.ReceiveStatus{Updated: time.Unix(1700000000, 0), Cluster: 7, Connected: true, Timeline: 2,
		Received: 0x3000200, Flushed: 0x3000100, Uploaded: 0x3000000, LagBytes: 256, CommitsWaiting: 3, SyncState: "sync"}
	var b strings.Builder
	s := NewSet()
	s.AddReceive(st)
	if err := s.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`tidemark_receive_flushed_lsn{cluster="7"} 5.0331904e+07`,
		`tidemark_receive_uploaded_lsn{cluster="7"} 5.0331648e+07`,
		`tidemark_receive_lag_bytes{cluster="7"} 256`,
		`tidemark_receive_commits_waiting{cluster="7"} 3`,
		`tidemark_receive_sync{cluster="7"} 1`,
		`tidemark_receive_timeline{cluster="7"} 2`,
		`tidemark_receive_status_timestamp_seconds{cluster="7"} 1.7e+09`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("no %s in\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "slot_active") {
		t.Errorf("slot_active without a slot state:\n%s", b.String())
	}

	var r Receive
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	active := true
	st.SlotActive = &active
	r.Update(st)
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`tidemark_receive_slot_active{cluster="7"} 1`, "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("endpoint: no %s", want)
		}
	}
}
