package hec

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSend sends 1000-event batches of ~400-byte audit events to the
// fake HEC over TLS; the server decodes and validates every event, so the
// figure is client and server together on one machine.
func BenchmarkSend(b *testing.B) {
	for _, bc := range []struct {
		name string
		ack  bool
		gzip bool
	}{{"noack", false, false}, {"noack-gzip", false, true}, {"ack", true, false}} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFakeHEC(b, "tok")
			f.discard, f.ackEnabled = true, bc.ack
			c, _ := newClient(b, f, func(c *Config) {
				c.Ack, c.Gzip, c.AckPollInterval = bc.ack, bc.gzip, time.Millisecond
			})
			batch := auditEvents(1000, 400)
			ctx := context.Background()
			for b.Loop() {
				if err := c.Send(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkEncode is the client's share of BenchmarkSend: building the
// request bodies of a 1000-event batch.
func BenchmarkEncode(b *testing.B) {
	f := newFakeHEC(b, "tok")
	c, _ := newClient(b, f, nil)
	batch := auditEvents(1000, 400)
	for b.Loop() {
		if _, err := c.encode(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "events/s")
}
