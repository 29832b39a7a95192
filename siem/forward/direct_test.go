package forward

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// A crash while the direct path drains a backlog resends at most one
// output batch: sources hand over at most batch_events at a time, and the
// checkpoint is stored after each batch is sent, before the next goes out.
// Here the output hangs after five batches of a 2000-line backlog; the
// stored checkpoint must then be the end of exactly what was delivered.
func TestDirectCheckpointFollowsEveryOutputBatch(t *testing.T) {
	const batch = 50
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	appendLines(t, logPath, 0, 2000, lineText)
	net := newNet()
	s := net.sink("o1")
	s.hold(5)
	defer s.release()
	fw := newForwarder(t, filepath.Join(dir, "spool.db"), net)
	o := output1("o1", "")
	o.BatchEvents = batch
	apply(t, fw, siem.Config{Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}}, Outputs: []siem.OutputConfig{o}}, 1)

	eventually(t, 10*time.Second, "the sixth send waiting", func() (bool, string) {
		return s.nBlocked() == 1, fmt.Sprintf("%d blocked, %d delivered", s.nBlocked(), len(s.lines()))
	})
	delivered := len(s.lines())
	if delivered == 0 || delivered > 5*batch {
		t.Fatalf("%d events delivered in five batches of at most %d", delivered, batch)
	}
	raw, err := fw.spool.Checkpoint(checkpointKey(logPath))
	if err != nil || raw == nil {
		t.Fatalf("checkpoint after %d delivered events: %q, %v", delivered, raw, err)
	}
	var cp struct {
		Offset int64 `json:"offset"`
	}
	if err := json.Unmarshal(raw, &cp); err != nil {
		t.Fatal(err)
	}
	lineBytes := int64(len(lineText(0)) + 1)
	if want := int64(delivered) * lineBytes; cp.Offset != want {
		t.Errorf("checkpoint at byte %d (line %d) with %d lines delivered; want byte %d: a crash now would resend %d lines",
			cp.Offset, cp.Offset/lineBytes, delivered, want, int64(delivered)-cp.Offset/lineBytes)
	}
	s.mu.Lock()
	for i, a := range s.attempts {
		if len(a) > batch {
			t.Errorf("send %d had %d events; batch_events is %d", i, len(a), batch)
		}
	}
	s.mu.Unlock()
}
