package forward

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
)

// pipeOut is a pipelining output (output.Pipeline) whose batches resolve
// only when the test says so, in any order it likes.
type pipeOut struct {
	mu      sync.Mutex
	started []*pipeBatch
}

type pipeBatch struct {
	lines []string
	done  chan struct{}
	err   error
}

func (b *pipeBatch) Done() <-chan struct{} { return b.done }
func (b *pipeBatch) Err() error            { return b.err }

func (o *pipeOut) Start(ctx context.Context, batch []siem.Event) (output.Pending, error) {
	b := &pipeBatch{done: make(chan struct{})}
	for _, ev := range batch {
		b.lines = append(b.lines, string(ev.Raw))
	}
	o.mu.Lock()
	o.started = append(o.started, b)
	o.mu.Unlock()
	return b, nil
}

func (o *pipeOut) Send(ctx context.Context, batch []siem.Event) error {
	p, _ := o.Start(ctx, batch)
	select {
	case <-p.Done():
		return p.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (o *pipeOut) Close() error { return nil }

func (o *pipeOut) nStarted() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.started)
}

func (o *pipeOut) resolve(i int, err error) {
	o.mu.Lock()
	b := o.started[i]
	o.mu.Unlock()
	b.err = err
	close(b.done)
}

// The direct path starts the next batches while earlier ones await their
// acknowledgement, and stores the checkpoint only up to the first batch
// not acknowledged: a later batch acknowledged out of order does not move
// it, so a restart resends from there and nothing is lost.
func TestDirectPipelinesAndCheckpointsAcknowledgedPrefix(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	spoolPath := filepath.Join(dir, "spool.db")
	const batch, n = 10, 50
	appendLines(t, logPath, 0, n, lineText)
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{{Name: "o1", Type: siem.OutputRELP, Address: "siem.example.com:2514", BatchEvents: batch}},
	}
	part := handoffEvents(cfg.Outputs[0]) // what a source hands over at once
	out := &pipeOut{}
	fw1 := newForwarderOpts(t, Options{SpoolPath: spoolPath, Dial: func(siem.OutputConfig, string, string) (output.Output, error) { return out, nil }})
	apply(t, fw1, cfg, 1)
	eventually(t, 10*time.Second, "three batches in flight at once", func() (bool, string) {
		return out.nStarted() >= 3, fmt.Sprintf("%d started", out.nStarted())
	})
	out.resolve(2, nil) // out of order: must not count before batch 1
	out.resolve(0, nil)
	eventually(t, 10*time.Second, "the first batch acknowledged", func() (bool, string) {
		got := outputStatus(fw1.Status(), "o1").GetEventsAcknowledged()
		return got == uint64(part), fmt.Sprintf("%d acknowledged", got)
	})
	if err := fw1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := outputStatus(fw1.Status(), "o1").GetEventsAcknowledged(); got != uint64(part) {
		t.Fatalf("%d acknowledged, want only the first batch (%d)", got, part)
	}
	out.mu.Lock()
	unsettled := 0
	for _, b := range out.started[1:] {
		unsettled += len(b.lines)
	}
	out.mu.Unlock()
	if unsettled > batch {
		t.Fatalf("%d events started and not checkpointed, more than batch_events (%d)", unsettled, batch)
	}

	net2 := newNet()
	s2 := net2.sink("o1")
	fw2 := newForwarder(t, spoolPath, net2)
	apply(t, fw2, cfg, 1)
	waitDelivered(t, s2, n-part, 15*time.Second)
	got := s2.lines()
	for _, want := range wantLines(part, n, lineText) {
		if !slices.Contains(got, want) {
			t.Fatalf("%q lost after the restart; got %s", want, strings.Join(got, ","))
		}
	}
}

// A failed batch in flight fails the rest with it: all are spooled in
// order and resent once the output recovers; nothing is lost.
func TestDirectPipelineFailureResends(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	const batch, n = 10, 50
	appendLines(t, logPath, 0, n, lineText)
	cfg := siem.Config{
		Sources: []siem.SourceConfig{{Path: logPath, Tag: "app"}},
		Outputs: []siem.OutputConfig{{Name: "o1", Type: siem.OutputRELP, Address: "siem.example.com:2514", BatchEvents: batch}},
	}
	out := &pipeOut{}
	fw := newForwarderOpts(t, Options{SpoolPath: filepath.Join(dir, "spool.db"), Dial: func(siem.OutputConfig, string, string) (output.Output, error) { return out, nil }})
	apply(t, fw, cfg, 1)
	eventually(t, 10*time.Second, "three batches in flight at once", func() (bool, string) {
		return out.nStarted() >= 3, fmt.Sprintf("%d started", out.nStarted())
	})
	failedAt := out.nStarted()
	out.resolve(0, nil)
	refused := errors.New("relp: server refused")
	for i := 1; i < failedAt; i++ {
		out.resolve(i, refused)
	}
	// Resolve every later batch (the resends from the spool) as it comes.
	delivered := map[string]int{}
	for _, l := range out.started[0].lines {
		delivered[l]++
	}
	next := failedAt
	eventually(t, 15*time.Second, "every line delivered", func() (bool, string) {
		for ; next < out.nStarted(); next++ {
			out.mu.Lock()
			b := out.started[next]
			out.mu.Unlock()
			for _, l := range b.lines {
				delivered[l]++
			}
			out.resolve(next, nil)
		}
		return len(delivered) == n, fmt.Sprintf("%d distinct lines", len(delivered))
	})
	for _, want := range wantLines(0, n, lineText) {
		if delivered[want] == 0 {
			t.Fatalf("%q lost", want)
		}
	}
}
