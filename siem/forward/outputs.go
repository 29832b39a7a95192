package forward

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
)

// maxBatchBytes bounds one batch read from the spool for an output.
const maxBatchBytes = 4 << 20

// runOutput sends one output's queue until ctx ends: peek a batch, send it,
// and acknowledge it in the spool only when the output confirmed it.
func (f *Forwarder) runOutput(ctx context.Context, o siem.OutputConfig, ost *outputStats) {
	log := f.log.With("output", o.Name, "type", o.Type, "address", o.Address)
	var out output.Output
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	failures := 0
	for {
		if err := f.spool.Wait(ctx, o.Name); err != nil {
			return
		}
		items, err := f.spool.Peek(o.Name, o.BatchEvents, maxBatchBytes)
		if err != nil {
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
		if out == nil {
			out, err = f.opts.Dial(o, f.opts.Hostname, f.opts.AppName)
		}
		if err == nil && len(batch) > 0 {
			err = out.Send(ctx, batch)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
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
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		if failures > 0 {
			log.Info("SIEM output recovered", "after_failures", failures)
		}
		failures = 0
		if err := f.spool.Ack(o.Name, items[len(items)-1].Seq); err != nil {
			log.Error("acknowledge spool entries", "error", err)
		}
		ost.sent(len(batch), bytes)
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
