package forward

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
	"github.com/bud-ecosystem/budfleet/siem/spool"
)

// maxBatchBytes bounds one batch read from the spool for an output.
const maxBatchBytes = 4 << 20

// runOutput sends one output's queue until ctx ends: the spool's entries
// first (peek a batch, send it, acknowledge it in the spool only when the
// output confirmed it), then what sources hand over directly (direct.go).
func (f *Forwarder) runOutput(ctx context.Context, o siem.OutputConfig, ost *outputStats, d *direct) {
	log := f.log.With("output", o.Name, "type", o.Type, "address", o.Address)
	var out output.Output
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	// Nothing handed over may be dropped: what was not sent goes into the
	// spool with its checkpoint.
	storeCP := func(cp map[string][]byte) {
		if err := f.spool.Append(nil, cp); err != nil {
			log.Error("store the checkpoint of sent batches", "error", err)
		}
	}
	defer func() {
		d.storeCP(storeCP)
		d.close(func(b directBatch) { f.spoolDirect(o.Name, b, log) })
	}()
	failures := 0
	// failed handles a failed send: the connection is dropped and the next
	// try waits out the backoff. It reports false when ctx ended.
	failed := func(err error) bool {
		if ctx.Err() != nil {
			return false
		}
		failures++
		msg := output.DescribeTLSError(err)
		ost.fail(msg)
		wait := backoff(failures)
		if failures == 1 || failures%10 == 0 {
			log.Warn("SIEM output failed; events stay in the spool and are resent", "error", msg, "retry_in", wait, "failures", failures)
		}
		if out != nil {
			out.Close()
			out = nil
		}
		return sleep(ctx, wait)
	}
	succeeded := func(events, bytes int) {
		if failures > 0 {
			log.Info("SIEM output recovered", "after_failures", failures)
		}
		failures = 0
		ost.sent(events, bytes)
	}
	send := func(batch []siem.Event) error {
		var err error
		if out == nil {
			out, err = f.opts.Dial(o, f.opts.Hostname, f.opts.AppName)
		}
		if err == nil && len(batch) > 0 {
			err = out.Send(ctx, batch)
		}
		return err
	}
	// start begins sending a handed-over batch: on a pipelining output
	// without waiting for its acknowledgement, on others with Send.
	start := func(batch []siem.Event) (output.Pending, error) {
		var err error
		if out == nil {
			if out, err = f.opts.Dial(o, f.opts.Hostname, f.opts.AppName); err != nil {
				return nil, err
			}
		}
		if p, ok := out.(output.Pipeline); ok {
			return p.Start(ctx, batch)
		}
		if err := out.Send(ctx, batch); err != nil {
			return nil, err
		}
		return sent{}, nil
	}
	for {
		// The spool first: it holds what is older than any handoff.
		select {
		case <-ctx.Done():
			return
		case <-f.spool.Ready(o.Name):
		default:
			select {
			case <-ctx.Done():
				return
			case <-f.spool.Done():
				return
			case <-f.spool.Ready(o.Name):
			case <-d.readyChan():
				if err := f.sendDirect(ctx, o, d, start, storeCP, succeeded, log); err != nil {
					if !failed(err) {
						return
					}
				}
				continue
			}
		}
		items, err := f.spool.Peek(o.Name, o.BatchEvents, maxBatchBytes)
		if err != nil {
			if errors.Is(err, spool.ErrClosed) {
				return
			}
			log.Error("read spool", "error", err)
			if !sleep(ctx, time.Second) {
				return
			}
			continue
		}
		if len(items) == 0 {
			continue
		}
		batch := make([]siem.Event, 0, len(items))
		bytes := 0
		for _, it := range items {
			ev, err := decodeEvent(it.Data)
			if err != nil {
				// An entry this build cannot read would block the queue
				// for ever; it is reported and skipped.
				log.Error("unreadable spool entry skipped", "seq", it.Seq, "error", err)
				continue
			}
			batch = append(batch, ev)
			bytes += len(ev.Raw)
		}
		if err := send(batch); err != nil {
			if !failed(err) {
				return
			}
			continue
		}
		if err := f.spool.Ack(o.Name, items[len(items)-1].Seq); err != nil {
			log.Error("acknowledge spool entries", "error", err)
		}
		succeeded(len(batch), bytes)
		d.setFailed(false) // sources hand over again once the spool is empty
	}
}

// spoolDirect puts a handed-over batch that was not sent into the spool
// with its checkpoint, so that it is resent from there.
func (f *Forwarder) spoolDirect(queue string, b directBatch, log *slog.Logger) {
	entries := make([]spool.Entry, 0, len(b.events))
	for _, ev := range b.events {
		data, err := encodeEvent(ev)
		if err != nil {
			log.Error("encode event", "error", err)
			continue
		}
		entries = append(entries, spool.Entry{Queue: queue, Data: data})
	}
	// Handoffs happen only while the queue is empty and a batch is at
	// most an eighth of the spool: it fits unless other queues filled the
	// spool. Then it waits for room a while; giving up leaves the events
	// in the source file before the checkpoint, but a later checkpoint of
	// the source could pass them, which is said loudly.
	for try := 0; ; try++ {
		err := f.spool.Append(entries, b.cps)
		if err == nil || errors.Is(err, spool.ErrClosed) {
			return
		}
		if errors.Is(err, spool.ErrTooLarge) {
			for _, e := range entries {
				if err := f.spool.Append([]spool.Entry{e}, nil); err != nil {
					log.Error("SIEM event could not be spooled and is lost", "error", err)
				}
			}
			entries = nil
			continue
		}
		if try == 30 {
			log.Error("SIEM events could not be spooled after a failed send; they may be lost", "events", len(entries), "error", err)
			return
		}
		time.Sleep(time.Second)
	}
}

// backoff is capped exponential with full jitter: 250ms .. 30s.
func backoff(failures int) time.Duration {
	d := 250 * time.Millisecond
	for i := 1; i < failures && d < 30*time.Second; i++ {
		d *= 2
	}
	d = min(d, 30*time.Second)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
