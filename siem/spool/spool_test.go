package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/internal/boltdb"
)

func open(t testing.TB, path string, o Options) *Spool {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newSpool(t testing.TB, o Options) (*Spool, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	return open(t, path, o), path
}

func entries(queue string, from, n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{Queue: queue, Data: fmt.Appendf(nil, "e%04d", from+i)}
	}
	return out
}

func datas(items []Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = string(it.Data)
	}
	return out
}

func peekAll(t testing.TB, s *Spool, q string) []Item {
	t.Helper()
	items, err := s.Peek(q, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return items
}

// scan recounts the queues from the file, to check the stored counters.
func scan(t testing.TB, s *Spool) map[string][2]int64 {
	t.Helper()
	out := map[string][2]int64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketQueues).ForEachBucket(func(name []byte) error {
			var c [2]int64
			err := tx.Bucket(bucketQueues).Bucket(name).ForEach(func(k, v []byte) error {
				c[0] += int64(len(v) - 8)
				c[1]++
				return nil
			})
			out[string(name)] = c
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkCounters(t testing.TB, s *Spool) {
	t.Helper()
	st := s.Stats()
	got := scan(t, s)
	var bytes, n int64
	for q, c := range got {
		qs := st.Queues[q]
		if qs.Bytes != c[0] || qs.Entries != c[1] {
			t.Errorf("queue %q: stats say %d bytes / %d entries, file holds %d / %d", q, qs.Bytes, qs.Entries, c[0], c[1])
		}
		bytes += c[0]
		n += c[1]
	}
	if st.Bytes != bytes || st.Entries != n {
		t.Errorf("totals: stats say %d bytes / %d entries, file holds %d / %d", st.Bytes, st.Entries, bytes, n)
	}
	if st.Bytes != s.total {
		t.Errorf("running total %d != %d", s.total, st.Bytes)
	}
}

func TestOrderPreserved(t *testing.T) {
	s, _ := newSpool(t, Options{NoSync: true})
	var want []string
	for b := range 5 {
		batch := entries("q", b*10, 10)
		if err := s.Append(batch, nil); err != nil {
			t.Fatal(err)
		}
		for _, e := range batch {
			want = append(want, string(e.Data))
		}
	}
	items := peekAll(t, s, "q")
	if got := datas(items); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("order: got %v, want %v", got, want)
	}
	for i, it := range items {
		if it.Seq != uint64(i+1) {
			t.Fatalf("item %d has seq %d", i, it.Seq)
		}
	}
	checkCounters(t, s)
}

func TestPeekLimits(t *testing.T) {
	s, _ := newSpool(t, Options{NoSync: true})
	if items, err := s.Peek("q", 10, 0); err != nil || len(items) != 0 {
		t.Fatalf("empty queue: %v %v", items, err)
	}
	// Sizes 10, 20, 30, 40, 50.
	var batch []Entry
	for i := 1; i <= 5; i++ {
		batch = append(batch, Entry{Queue: "q", Data: bytes.Repeat([]byte{byte('a' + i)}, 10*i)})
	}
	if err := s.Append(batch, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		max, maxBytes, want int
	}{
		{2, 0, 2},
		{0, 0, 5},
		{10, 0, 5},
		{10, 30, 2},  // 10+20
		{10, 29, 1},  // 10
		{10, 5, 1},   // always at least one
		{10, 60, 3},  // 10+20+30
		{1, 1000, 1}, // max wins
	} {
		items, err := s.Peek("q", tc.max, tc.maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != tc.want {
			t.Errorf("Peek(max=%d, maxBytes=%d) = %d items, want %d", tc.max, tc.maxBytes, len(items), tc.want)
		}
	}
	// Peek does not remove, and the copy is ours.
	items, _ := s.Peek("q", 1, 0)
	items[0].Data[0] = 'X'
	again, _ := s.Peek("q", 1, 0)
	if again[0].Data[0] == 'X' || len(peekAll(t, s, "q")) != 5 {
		t.Fatal("Peek changed the queue")
	}
}

func TestAckPartial(t *testing.T) {
	s, _ := newSpool(t, Options{NoSync: true})
	if err := s.Append(entries("q", 0, 10), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack("q", 4); err != nil {
		t.Fatal(err)
	}
	items := peekAll(t, s, "q")
	if len(items) != 6 || items[0].Seq != 5 || string(items[0].Data) != "e0004" {
		t.Fatalf("after Ack(4): %v", datas(items))
	}
	checkCounters(t, s)
	// Acking again, or what is gone, is a no-op.
	if err := s.Ack("q", 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack("nope", 100); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack("q", 100); err != nil {
		t.Fatal(err)
	}
	if n := len(peekAll(t, s, "q")); n != 0 {
		t.Fatalf("%d left after acking all", n)
	}
	qs := s.Stats().Queues["q"]
	if qs.Entries != 0 || qs.Bytes != 0 || !qs.OldestTime.IsZero() {
		t.Fatalf("stats after acking all: %+v", qs)
	}
	// Sequences are not reused after the queue emptied.
	if err := s.Append(entries("q", 10, 1), nil); err != nil {
		t.Fatal(err)
	}
	if items := peekAll(t, s, "q"); items[0].Seq != 11 {
		t.Fatalf("seq after emptying: %d, want 11", items[0].Seq)
	}
	checkCounters(t, s)
}

func TestDurability(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "spool.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Unix(1700000000, 0)
	s.now = func() time.Time { return base }
	if err := s.Append(entries("a", 0, 5), map[string][]byte{"/var/log/audit/audit.log": []byte("ino=1 off=500")}); err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return base.Add(time.Minute) }
	if err := s.Append(entries("b", 0, 3), map[string][]byte{"other": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack("a", 2); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(entries("a", 0, 1), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}

	s = open(t, path, Options{})
	after := s.Stats()
	if after.Bytes != before.Bytes || after.Entries != before.Entries || after.Entries != 6 {
		t.Fatalf("stats before close %+v, after reopen %+v", before, after)
	}
	for q, qs := range before.Queues {
		aq := after.Queues[q]
		if aq.Bytes != qs.Bytes || aq.Entries != qs.Entries || !aq.OldestTime.Equal(qs.OldestTime) {
			t.Errorf("queue %q: before %+v after %+v", q, qs, aq)
		}
	}
	if !after.Queues["a"].OldestTime.Equal(base) || !after.Queues["b"].OldestTime.Equal(base.Add(time.Minute)) {
		t.Errorf("oldest times after reopen: %+v", after.Queues)
	}
	if lag := after.Queues["b"].Lag(base.Add(time.Minute + 5*time.Second)); lag != 5*time.Second {
		t.Errorf("lag %v", lag)
	}
	checkCounters(t, s)
	if got := datas(peekAll(t, s, "a")); strings.Join(got, ",") != "e0002,e0003,e0004" {
		t.Fatalf("queue a after reopen: %v", got)
	}
	if got := datas(peekAll(t, s, "b")); strings.Join(got, ",") != "e0000,e0001,e0002" {
		t.Fatalf("queue b after reopen: %v", got)
	}
	cp, err := s.Checkpoint("/var/log/audit/audit.log")
	if err != nil || string(cp) != "ino=1 off=500" {
		t.Fatalf("checkpoint: %q %v", cp, err)
	}
	if cp, err := s.Checkpoint("unknown"); err != nil || cp != nil {
		t.Fatalf("unknown checkpoint: %q %v", cp, err)
	}
	// Sequences continue after reopen.
	if err := s.Append(entries("a", 5, 1), map[string][]byte{"other": nil}); err != nil {
		t.Fatal(err)
	}
	items := peekAll(t, s, "a")
	if last := items[len(items)-1]; last.Seq != 6 {
		t.Fatalf("seq after reopen %d, want 6", last.Seq)
	}
	if cp, _ := s.Checkpoint("other"); cp != nil {
		t.Fatalf("nil checkpoint did not delete: %q", cp)
	}
}

func TestFullRefusesEverything(t *testing.T) {
	s, path := newSpool(t, Options{MaxBytes: 100, NoSync: true})
	big := Entry{Queue: "q", Data: bytes.Repeat([]byte("x"), 40)}
	if err := s.Append([]Entry{big, big}, map[string][]byte{"src": []byte("1")}); err != nil {
		t.Fatal(err)
	}
	err := s.Append([]Entry{big, {Queue: "other", Data: []byte("y")}}, map[string][]byte{"src": []byte("2"), "new": []byte("n")})
	if !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	check := func() {
		t.Helper()
		if cp, _ := s.Checkpoint("src"); string(cp) != "1" {
			t.Fatalf("checkpoint moved on a refused batch: %q", cp)
		}
		if cp, _ := s.Checkpoint("new"); cp != nil {
			t.Fatalf("checkpoint stored on a refused batch: %q", cp)
		}
		if n := len(peekAll(t, s, "q")); n != 2 {
			t.Fatalf("queue q holds %d", n)
		}
		if n := len(peekAll(t, s, "other")); n != 0 {
			t.Fatalf("queue other holds %d", n)
		}
		if st := s.Stats(); st.Bytes != 80 || st.Entries != 2 || st.Dropped != 0 {
			t.Fatalf("stats %+v", st)
		}
		checkCounters(t, s)
	}
	check()
	// Exactly full is fine; one byte more is not.
	if err := s.Append([]Entry{{Queue: "q", Data: make([]byte, 21)}}, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	check()
	// Too large to ever fit: a different error, still nothing stored.
	if err := s.Append([]Entry{{Queue: "q", Data: make([]byte, 101)}}, map[string][]byte{"src": []byte("3")}); !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrFull) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	check()
	if err := s.Append([]Entry{{Queue: "q", Data: make([]byte, 20)}}, nil); err != nil {
		t.Fatalf("exactly full: %v", err)
	}
	// After an ack there is room again.
	if err := s.Ack("q", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]Entry{big}, map[string][]byte{"src": []byte("4")}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path, Options{MaxBytes: 100, NoSync: true})
	if st := s.Stats(); st.Bytes != 100 {
		t.Fatalf("bytes after reopen %d", st.Bytes)
	}
	if err := s.Append([]Entry{{Queue: "q", Data: []byte("z")}}, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("after reopen: want ErrFull, got %v", err)
	}
}

func TestDropOldest(t *testing.T) {
	s, path := newSpool(t, Options{MaxBytes: 100, DropOldest: true, NoSync: true})
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	ten := func(q string, c byte) Entry { return Entry{Queue: q, Data: bytes.Repeat([]byte{c}, 10)} }
	// a: 4 × 10 bytes, b: 3 × 10, a: 3 × 10 → 100 bytes, full.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Append([]Entry{ten("a", '0'), ten("a", '1'), ten("a", '2'), ten("a", '3')}, nil))
	must(s.Append([]Entry{ten("b", '0'), ten("b", '1'), ten("b", '2')}, nil))
	must(s.Append([]Entry{ten("a", '4'), ten("a", '5'), ten("a", '6')}, nil))
	if st := s.Stats(); st.Bytes != 100 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}

	// 25 bytes more for a: exactly 3 entries of a (30 bytes) must go, the
	// oldest ones, and none of b.
	must(s.Append([]Entry{{Queue: "a", Data: bytes.Repeat([]byte("n"), 25)}}, map[string][]byte{"src": []byte("cp")}))
	st := s.Stats()
	if st.Dropped != 3 || st.Queues["a"].Dropped != 3 || st.Queues["b"].Dropped != 0 {
		t.Fatalf("dropped: %+v", st)
	}
	if st.Bytes != 95 {
		t.Fatalf("bytes %d, want 95", st.Bytes)
	}
	got := datas(peekAll(t, s, "a"))
	if got[0] != strings.Repeat("3", 10) || len(got) != 5 {
		t.Fatalf("queue a after drop: %v", got)
	}
	if n := len(peekAll(t, s, "b")); n != 3 {
		t.Fatalf("queue b lost entries: %d", n)
	}
	if cp, _ := s.Checkpoint("src"); string(cp) != "cp" {
		t.Fatalf("checkpoint %q", cp)
	}
	checkCounters(t, s)

	// Across two affected queues the oldest by append time go first: b's
	// entries (appended before a's 4..6) go before a's.
	must(s.Append([]Entry{ten("a", 'x'), ten("b", 'x'), ten("b", 'y')}, nil)) // 30 more: 95+30-100 = 25 → 3 entries
	// Dropped: a:'3' (appended first), then b:'0', b:'1' (second batch),
	// not a:'4' (third).
	if got := datas(peekAll(t, s, "a")); got[0] != strings.Repeat("4", 10) {
		t.Fatalf("queue a: %v", got)
	}
	if got := datas(peekAll(t, s, "b")); got[0] != strings.Repeat("2", 10) {
		t.Fatalf("queue b: %v", got)
	}
	st = s.Stats()
	if st.Dropped != 6 || st.Queues["a"].Dropped != 4 || st.Queues["b"].Dropped != 2 || st.Bytes != 95 {
		t.Fatalf("stats %+v", st)
	}
	checkCounters(t, s)

	// A queue not yet holding anything gets 90 bytes: its own queue has
	// nothing to drop, so the others' oldest go, by append time across them:
	// 95+90-100 = 85 bytes = b:'2', a:'4'..'6', a:'n', a:'x', b:'x'.
	var cs []Entry
	for range 9 {
		cs = append(cs, ten("c", 'c'))
	}
	must(s.Append(cs, nil))
	st = s.Stats()
	if st.Bytes != 100 || st.Queues["c"].Entries != 9 || st.Queues["a"].Entries != 0 {
		t.Fatalf("stats %+v", st)
	}
	if got := datas(peekAll(t, s, "b")); len(got) != 1 || got[0] != strings.Repeat("y", 10) {
		t.Fatalf("queue b: %v", got)
	}
	checkCounters(t, s)

	// A batch larger than the spool keeps its newest part.
	var huge []Entry
	for i := range 12 {
		huge = append(huge, Entry{Queue: "d", Data: fmt.Appendf(nil, "%010d", i)})
	}
	must(s.Append(huge, nil))
	got = datas(peekAll(t, s, "d"))
	if len(got) != 10 || got[0] != fmt.Sprintf("%010d", 2) {
		t.Fatalf("queue d: %v", got)
	}
	if st := s.Stats(); st.Queues["d"].Dropped != 2 || st.Bytes != 100 {
		t.Fatalf("stats %+v", st)
	}
	checkCounters(t, s)

	dropped := s.Stats().Dropped
	s.Close()
	s = open(t, path, Options{MaxBytes: 100, DropOldest: true, NoSync: true})
	if st := s.Stats(); st.Dropped != dropped || st.Bytes != 100 {
		t.Fatalf("after reopen %+v, dropped before %d", st, dropped)
	}
	checkCounters(t, s)
}

func TestQueuesIndependent(t *testing.T) {
	s, _ := newSpool(t, Options{NoSync: true})
	var batch []Entry
	for i := range 6 {
		batch = append(batch, Entry{Queue: "syslog", Data: fmt.Appendf(nil, "s%d", i)}, Entry{Queue: "hec", Data: fmt.Appendf(nil, "h%d", i)})
	}
	if err := s.Append(batch, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack("syslog", 4); err != nil {
		t.Fatal(err)
	}
	if got := datas(peekAll(t, s, "syslog")); strings.Join(got, ",") != "s4,s5" {
		t.Fatalf("syslog: %v", got)
	}
	hec := peekAll(t, s, "hec")
	if got := datas(hec); strings.Join(got, ",") != "h0,h1,h2,h3,h4,h5" {
		t.Fatalf("hec: %v", got)
	}
	if hec[0].Seq != 1 {
		t.Fatalf("hec sequence starts at %d", hec[0].Seq)
	}
	st := s.Stats()
	if st.Queues["syslog"].Entries != 2 || st.Queues["hec"].Entries != 6 || st.Entries != 8 {
		t.Fatalf("stats %+v", st)
	}
	checkCounters(t, s)
}

func TestWait(t *testing.T) {
	s, _ := newSpool(t, Options{NoSync: true})

	// Honours ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Wait(ctx, "q"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait: %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 5*time.Second {
		t.Fatalf("Wait returned after %v", d)
	}

	// Wakes on Append to its queue, not to another one.
	var wg sync.WaitGroup
	woke := make(chan error, 2)
	for range 2 {
		wg.Go(func() { woke <- s.Wait(context.Background(), "q") })
	}
	time.Sleep(20 * time.Millisecond)
	if err := s.Append(entries("other", 0, 1), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		t.Fatalf("woke on another queue: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := s.Append(entries("q", 0, 1), nil); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for range 2 {
		if err := <-woke; err != nil {
			t.Fatal(err)
		}
	}
	// Non-empty: returns at once.
	if err := s.Wait(context.Background(), "q"); err != nil {
		t.Fatal(err)
	}

	// Close wakes waiters.
	done := make(chan error, 1)
	go func() { done <- s.Wait(context.Background(), "empty") }()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
}

// Concurrent appends, waits, peeks and acks keep the counters right and
// lose nothing (run with -race).
func TestConcurrent(t *testing.T) {
	s, _ := newSpool(t, Options{NoSync: true})
	const producers, batches, per = 4, 50, 20
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for b := range batches {
				if err := s.Append(entries("q", p*100000+b*per, per), map[string][]byte{fmt.Sprint(p): fmt.Append(nil, b)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	seen := 0
	var last uint64
	for seen < producers*batches*per {
		if err := s.Wait(ctx, "q"); err != nil {
			t.Fatalf("after %d: %v", seen, err)
		}
		items, err := s.Peek("q", 37, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if it.Seq <= last {
				t.Fatalf("seq %d after %d", it.Seq, last)
			}
			last = it.Seq
		}
		seen += len(items)
		_ = s.Stats()
		if err := s.Ack("q", last); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if st := s.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	checkCounters(t, s)
}

func TestLocked(t *testing.T) {
	_, path := newSpool(t, Options{NoSync: true})
	start := time.Now()
	s2, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second Open took %v", d)
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), path) {
		t.Fatalf("error: %v", err)
	}
}

// Both daemons keep spools: the messages name no program unless the caller
// gives a hint that does.
func TestLockedMessageNamesNoProgram(t *testing.T) {
	_, path := newSpool(t, Options{NoSync: true})
	_, err := Open(path, Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || strings.Contains(err.Error(), "bud-") {
		t.Errorf("error without a hint: %v", err)
	}
	hint := "is another bud-controller running with the same --data-dir?"
	_, err = Open(path, Options{LockTimeout: 50 * time.Millisecond, LockHint: hint})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), hint) {
		t.Errorf("error with a hint: %v", err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	s, path := newSpool(t, Options{NoSync: true})
	if err := s.Append(entries("q", 0, 1), nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(boltdb.BucketMeta).Put(boltdb.KeySchemaVersion, u64(SchemaVersion()+1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(path, Options{})
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("want ErrNewerSchema, got %v", err)
	}
	if strings.Contains(err.Error(), "bud-") {
		t.Errorf("the spool's error names a program: %v", err)
	}
}

func TestFileMode(t *testing.T) {
	_, path := newSpool(t, Options{NoSync: true})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Fatalf("mode %o", m)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{MaxBytes: -1}); err == nil {
		t.Fatal("negative MaxBytes accepted")
	}
	s, _ := newSpool(t, Options{NoSync: true})
	if err := s.Append([]Entry{{Data: []byte("x")}}, nil); err == nil {
		t.Fatal("entry without queue accepted")
	}
	if err := s.Append(nil, map[string][]byte{"": []byte("x")}); err == nil {
		t.Fatal("checkpoint without source accepted")
	}
	// Checkpoints alone.
	if err := s.Append(nil, map[string][]byte{"s": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if cp, _ := s.Checkpoint("s"); string(cp) != "x" {
		t.Fatalf("checkpoint %q", cp)
	}
	if err := s.Append(nil, nil); err != nil {
		t.Fatal(err)
	}
}

// seqOf decodes the 8-byte counters the crash child writes.
func seqOf(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func TestMoveReroutesAndDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var batch []Entry
	for i := range 10 {
		kind := "drop"
		if i%2 == 0 {
			kind = "keep"
		}
		batch = append(batch, Entry{Queue: "old", Data: []byte(fmt.Sprintf("ev-%d-%s", i, kind))})
	}
	if err := s.Append(batch, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]Entry{{Queue: "new", Data: []byte("already")}}, nil); err != nil {
		t.Fatal(err)
	}
	moved, dropped, err := s.Move("old", func(d []byte) []string {
		if bytes.HasSuffix(d, []byte("keep")) {
			return []string{"new", "other"}
		}
		return nil
	})
	if err != nil || moved != 5 || dropped != 5 {
		t.Fatalf("Move = %d moved, %d dropped, %v; want 5, 5", moved, dropped, err)
	}
	items, err := s.Peek("new", 0, 0)
	if err != nil || len(items) != 6 || string(items[0].Data) != "already" || string(items[1].Data) != "ev-0-keep" || string(items[5].Data) != "ev-8-keep" {
		t.Fatalf("new queue after move = %v, %v", items, err)
	}
	st := s.Stats()
	if st.Queues["old"].Entries != 0 || st.Queues["old"].Dropped != 5 || st.Queues["other"].Entries != 5 || st.Queues["new"].Entries != 6 {
		t.Fatalf("stats after move = %+v", st.Queues)
	}
	want := st.Bytes
	s.Close()
	s, err = Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Stats(); got.Bytes != want || got.Queues["other"].Entries != 5 || got.Queues["old"].Entries != 0 {
		t.Fatalf("counters after reopen = %+v, bytes %d want %d", got.Queues, got.Bytes, want)
	}
}
