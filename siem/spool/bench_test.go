package spool

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

const (
	benchBatch     = 1000
	benchEntrySize = 300
)

func benchEntries(queue string) []Entry {
	batch := make([]Entry, benchBatch)
	for i := range batch {
		batch[i] = Entry{Queue: queue, Data: bytes.Repeat([]byte{'a' + byte(i%26)}, benchEntrySize)}
	}
	return batch
}

// BenchmarkAppend appends batches of 1000 × 300-byte entries, each with a
// checkpoint, with fsync: one commit per batch, so 1000 commits per million
// entries (bbolt's commit is two fdatasyncs: the pages, then the meta page).
// "steady" also acknowledges each batch after the next, so the file stops
// growing and pages are reused, as when outputs keep up.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []string{"grow", "steady"} {
		b.Run(mode, func(b *testing.B) {
			s, _ := newSpool(b, Options{MaxBytes: 64 << 30})
			batch := benchEntries("out")
			b.SetBytes(benchBatch * benchEntrySize)
			b.ResetTimer()
			start := time.Now()
			for i := 0; b.Loop(); i++ {
				cp := fmt.Appendf(nil, "off=%d", i)
				if err := s.Append(batch, map[string][]byte{"/var/log/audit/audit.log": cp}); err != nil {
					b.Fatal(err)
				}
				if mode == "steady" && i > 0 {
					if err := s.Ack("out", uint64((i-1)*benchBatch)); err != nil {
						b.Fatal(err)
					}
				}
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(b.N*benchBatch)/elapsed.Seconds(), "entries/s")
			commits := 1e6 / benchBatch
			if mode == "steady" {
				commits *= 2 // the Ack is a commit too
			}
			b.ReportMetric(commits, "commits/1M-entries")
		})
	}
}

// BenchmarkPeekAck takes 1000 entries off the head of a full queue and
// acknowledges them, with fsync, as an output does after each batch.
func BenchmarkPeekAck(b *testing.B) {
	s, _ := newSpool(b, Options{MaxBytes: 64 << 30})
	batch := benchEntries("out")
	fill := func(n int) {
		s.db.NoSync = true
		for range n {
			if err := s.Append(batch, nil); err != nil {
				b.Fatal(err)
			}
		}
		s.db.NoSync = false
		if err := s.db.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	fill(200)
	b.SetBytes(benchBatch * benchEntrySize)
	b.ResetTimer()
	start := time.Now()
	var paused time.Duration
	for b.Loop() {
		if s.Stats().Entries < benchBatch {
			b.StopTimer()
			t := time.Now()
			fill(200)
			paused += time.Since(t)
			b.StartTimer()
		}
		items, err := s.Peek("out", benchBatch, 4<<20)
		if err != nil {
			b.Fatal(err)
		}
		if len(items) != benchBatch {
			b.Fatalf("peeked %d", len(items))
		}
		if err := s.Ack("out", items[len(items)-1].Seq); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start) - paused
	b.ReportMetric(float64(b.N*benchBatch)/elapsed.Seconds(), "entries/s")
}
