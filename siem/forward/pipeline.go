package forward

import (
	"context"
	"errors"
	"log/slog"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
)

// pipelineDepth bounds the output batches started on a pipelining output
// (output.Pipeline, RELP) and not yet resolved. Waiting for each batch's
// answers before writing the next left the receiver idle for a round trip
// and a checkpoint fsync per batch; the output's own window bounds the
// messages in flight, this only the bookkeeping.
const pipelineDepth = 8

// pipelineParts is how many handoffs make up a batch_events on an output
// that pipelines (RELP): sources hand over a part at a time and the output
// keeps at most batch_events unsettled (started and not yet checkpointed).
// A crash resends what was unsettled, so the bound on duplicates stays one
// batch_events per crash while the parts behind the oldest keep the
// receiver busy during its round trip and checkpoint.
const pipelineParts = 4

// handoffEvents is how many events a source hands output o at once.
func handoffEvents(o siem.OutputConfig) int {
	n := o.BatchEvents
	if n <= 0 {
		n = siem.DefaultBatchEvents
	}
	if o.Type == siem.OutputRELP {
		n = max(1, n/pipelineParts)
	}
	return n
}

// flight is one output batch started: events [from, to) of b.
type flight struct {
	b        *directBatch
	from, to int
	p        output.Pending
}

// errRevoked: the source took its batches back (stall); their results no
// longer count.
var errRevoked = errors.New("handed-over batches revoked")

// sendDirect sends what sources hand over until nothing is pending or in
// flight, starting each output batch while earlier ones await their
// acknowledgement when the output pipelines. A batch's checkpoint is
// stored only once it and every batch before it are acknowledged: the
// checkpoint covers a contiguous acknowledged prefix. On a failure the
// unresolved batches and those pending are spooled in order (what the
// receiver took of them is sent again: bounded duplicates, no loss) and
// the error is returned.
func (f *Forwarder) sendDirect(ctx context.Context, o siem.OutputConfig, d *direct, start func([]siem.Event) (output.Pending, error),
	storeCP func(map[string][]byte), succeeded func(events, bytes int), log *slog.Logger) error {
	var fl []flight
	// settle resolves the flights at the front that are done (waiting
	// for the first when block).
	settle := func(block bool) error {
		for len(fl) > 0 {
			fr := fl[0]
			if fr.p == nil {
				return errors.New("not started")
			}
			if block {
				select {
				case <-fr.p.Done():
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				select {
				case <-fr.p.Done():
				default:
					return nil
				}
			}
			if err := fr.p.Err(); err != nil {
				return err
			}
			fl[0] = flight{}
			fl = fl[1:]
			if !d.progress(fr.b, fr.to) {
				return errRevoked
			}
			if fr.to == len(fr.b.events) {
				if d.sentAll(fr.b) {
					d.storeCP(storeCP)
				}
				succeeded(len(fr.b.events), fr.b.raw)
			}
		}
		return nil
	}
	// room reports whether the next pending batch may start: the events
	// unsettled stay within batch_events (one batch always may).
	room := func() bool {
		if len(fl) == 0 {
			return true
		}
		if len(fl) >= pipelineDepth {
			return false
		}
		unsettled := len(fl[0].b.events)
		for i := 1; i < len(fl); i++ {
			if fl[i].b != fl[i-1].b {
				unsettled += len(fl[i].b.events)
			}
		}
		return unsettled+d.nextLen() <= max(1, o.BatchEvents)
	}
	fail := func(err error) error {
		if errors.Is(err, errRevoked) {
			return nil
		}
		// Refuse handoffs until the spool is empty again.
		d.setFailed(true)
		// Those that went through before the failure keep their
		// acknowledgement (and checkpoint), which goes first.
		for settle(false) == nil && len(fl) > 0 {
			select {
			case <-fl[0].p.Done():
				continue
			default:
			}
			break
		}
		d.storeCP(storeCP)
		for i := 0; i < len(fl); {
			b, from := fl[i].b, fl[i].from
			for i < len(fl) && fl[i].b == b {
				i++
			}
			d.finish(b, func() { f.spoolDirect(o.Name, directBatch{events: b.events[from:], cps: b.cps}, log) })
		}
		for p := d.take(); p != nil; p = d.take() {
			d.finish(p, func() { f.spoolDirect(o.Name, *p, log) })
		}
		return err
	}
	for {
		if err := settle(false); err != nil {
			if errors.Is(err, errRevoked) {
				return nil
			}
			return fail(err)
		}
		if room() {
			if b := d.take(); b != nil {
				// In output batches, each recorded, so that a revoke
				// takes back only what was not sent.
				for from := 0; from < len(b.events); {
					to := min(len(b.events), from+max(1, o.BatchEvents))
					p, err := start(b.events[from:to])
					fl = append(fl, flight{b: b, from: from, to: to, p: p})
					if err != nil {
						return fail(err)
					}
					if err := settle(false); err != nil {
						return fail(err)
					}
					from = to
				}
				continue
			}
		}
		if len(fl) == 0 {
			return nil
		}
		var ready <-chan struct{}
		if room() {
			ready = d.readyChan()
		}
		select {
		case <-fl[0].p.Done():
		case <-ready:
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
}

// sent is an output.Pending resolved already: a batch Send delivered.
type sent struct{}

var sentDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (sent) Done() <-chan struct{} { return sentDone }
func (sent) Err() error            { return nil }
