// Package spool is the SIEM forwarder's durable queue: events read from the
// sources are appended here, together with the sources' checkpoints, in one
// bbolt transaction, and stay until the output they are queued for has
// acknowledged them. Entries and checkpoints therefore never disagree: after
// a crash the sources resume exactly after the last event that was spooled.
//
// Schema (version 1):
//
//	meta/
//	  schema_version      -> uint64 big-endian
//	queues/
//	  <queue name>/       (one bucket per output; its sequence is never reset)
//	    <seq uint64 BE>   -> append time (unix nanos, uint64 BE) ++ payload
//	counters/
//	  <queue name>        -> bytes ++ entries ++ dropped (3 × uint64 BE)
//	checkpoints/
//	  <source>            -> opaque checkpoint of that source (caller-defined)
//
// The counters are updated in the same transaction as the entries they
// count, so Open reads them instead of scanning the queues. Bytes counts
// payload bytes only; the file is larger (16 bytes of key and time per
// entry, page overhead) and, like every bbolt file, never shrinks.
//
// The file is opened through internal/boltdb (meta is its bucket; an
// upgrade first copies the file to <path>.v<old version>.bak). Values are
// copied out of transactions before they are returned.
package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/internal/boltdb"
)

// Bucket names; meta/schema_version is boltdb's.
var (
	bucketQueues      = []byte("queues")
	bucketCounters    = []byte("counters")
	bucketCheckpoints = []byte("checkpoints")
)

// DefaultMaxBytes is the cap when Options.MaxBytes is 0.
const DefaultMaxBytes = 1 << 30

// Sentinel errors.
var (
	// ErrFull: the batch does not fit under MaxBytes and DropOldest is off.
	// Nothing was stored; retry once outputs have acknowledged entries.
	ErrFull = errors.New("spool is full")
	// ErrTooLarge: an entry (or, without DropOldest, the whole batch) is
	// larger than MaxBytes and could never be stored. Nothing was stored.
	ErrTooLarge = errors.New("larger than the spool's capacity")
	// ErrLocked: another process holds the spool file (boltdb.ErrLocked).
	ErrLocked = boltdb.ErrLocked
	// ErrNewerSchema: the file was written by a newer version
	// (boltdb.ErrNewerSchema).
	ErrNewerSchema = boltdb.ErrNewerSchema
	// ErrClosed: the spool was closed.
	ErrClosed = errors.New("spool is closed")
)

// migrations[i] brings a spool from schema version i to i+1. Append only.
var migrations = []boltdb.Migration{
	// 0 -> 1: the initial buckets.
	func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketQueues, bucketCounters, bucketCheckpoints} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
}

// SchemaVersion is the version this build writes.
func SchemaVersion() uint64 { return uint64(len(migrations)) }

// Options configure Open.
type Options struct {
	// MaxBytes caps the queued payload bytes across all queues
	// (default DefaultMaxBytes).
	MaxBytes int64
	// DropOldest: when a batch does not fit, delete the oldest entries
	// (counting them in Stats().Dropped) instead of refusing it with ErrFull.
	DropOldest bool
	// LockTimeout bounds the wait for another process's lock on the file
	// (default 1s).
	LockTimeout time.Duration
	// LockHint ends the ErrLocked message with what the user can check,
	// e.g. "is another bud-agent running with the same --state-dir?". Both
	// daemons keep spools, so the caller says which.
	LockHint string
	// NoSync skips fsync. Tests and benchmarks only: a power loss can then
	// lose or corrupt the spool.
	NoSync bool
}

// Entry is one payload to queue.
type Entry struct {
	// Queue names the queue (one per output). It must not be empty.
	Queue string
	Data  []byte
}

// Item is a queued entry.
type Item struct {
	Seq  uint64
	Data []byte
	// Time is when the entry was appended.
	Time time.Time
}

// Stats describe what is queued.
type Stats struct {
	// Totals across all queues.
	Bytes   int64
	Entries int64
	Dropped uint64
	// MaxBytes is the cap in force.
	MaxBytes int64
	// Queues holds every queue that ever received an entry.
	Queues map[string]QueueStats
}

// QueueStats describe one queue.
type QueueStats struct {
	Bytes   int64
	Entries int64
	// Dropped counts entries deleted by DropOldest, over the file's life.
	Dropped uint64
	// OldestTime is when the entry at the head was appended; zero when the
	// queue is empty.
	OldestTime time.Time
}

// Lag is how long the head entry has waited at now; 0 when empty.
func (q QueueStats) Lag(now time.Time) time.Duration {
	if q.OldestTime.IsZero() || now.Before(q.OldestTime) {
		return 0
	}
	return now.Sub(q.OldestTime)
}

// queueState is the in-memory copy of a queue's counters.
type queueState struct {
	bytes   int64
	entries int64
	dropped uint64
	oldest  int64 // unix nanos of the head entry; meaningful when entries > 0
}

// Spool is the durable queue. It is safe for concurrent use.
type Spool struct {
	db       *bolt.DB
	path     string
	maxBytes int64
	drop     bool
	now      func() time.Time

	// wmu serialises writers (Append, Ack), so that the in-memory counters
	// they read are those of the last committed transaction. Writers change
	// state only while also holding mu.
	wmu sync.Mutex

	mu      sync.Mutex
	state   map[string]queueState
	total   int64 // sum of state[*].bytes
	waiters map[string]chan struct{}

	closed   atomic.Bool
	closedCh chan struct{}
}

// Open opens (creating if needed) the spool file at path and migrates it.
func Open(path string, o Options) (*Spool, error) {
	if o.MaxBytes < 0 {
		return nil, fmt.Errorf("spool: MaxBytes must not be negative (got %d)", o.MaxBytes)
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	db, err := boltdb.Open(path, boltdb.Options{
		Name:        "spool",
		LockTimeout: o.LockTimeout,
		LockHint:    o.LockHint,
		Migrations:  migrations,
		NoSync:      o.NoSync,
		// The queues free pages at their heads and allocate at their tails:
		// the hashmap freelist stays fast when the free list is long.
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, err
	}
	s := &Spool{
		db:       db,
		path:     path,
		maxBytes: o.MaxBytes,
		drop:     o.DropOldest,
		now:      time.Now,
		state:    map[string]queueState{},
		waiters:  map[string]chan struct{}{},
		closedCh: make(chan struct{}),
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// load reads the counters and each queue's head: O(queues), not O(entries).
func (s *Spool) load() error {
	return s.db.View(func(tx *bolt.Tx) error {
		queues := tx.Bucket(bucketQueues)
		return tx.Bucket(bucketCounters).ForEach(func(k, v []byte) error {
			if len(v) != 24 {
				return fmt.Errorf("%s: corrupt counters of queue %q (%d bytes)", s.path, k, len(v))
			}
			st := queueState{
				bytes:   int64(binary.BigEndian.Uint64(v[0:])),
				entries: int64(binary.BigEndian.Uint64(v[8:])),
				dropped: binary.BigEndian.Uint64(v[16:]),
			}
			if st.entries > 0 {
				b := queues.Bucket(k)
				if b == nil {
					return fmt.Errorf("%s: queue %q has counters but no bucket", s.path, k)
				}
				_, hv := b.Cursor().First()
				if len(hv) < 8 {
					return fmt.Errorf("%s: queue %q counts %d entries but its head is missing or corrupt", s.path, k, st.entries)
				}
				st.oldest = int64(binary.BigEndian.Uint64(hv))
			}
			s.state[string(k)] = st
			s.total += st.bytes
			return nil
		})
	})
}

// Close closes the spool. Wait calls return ErrClosed; other calls after
// Close return ErrClosed.
func (s *Spool) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	close(s.closedCh)
	return s.db.Close()
}

// Path is the spool file.
func (s *Spool) Path() string { return s.path }

// Append stores entries, each at the tail of its queue, and the given
// source checkpoints in one transaction: one commit (one fsync round) for
// the whole batch. A nil checkpoint value deletes that source's checkpoint.
//
// When the queued bytes would exceed MaxBytes and DropOldest is off it
// stores nothing (neither entries nor checkpoints) and returns an error
// wrapping ErrFull. With DropOldest it deletes just enough of the oldest
// entries (by append time) of the queues in the batch, then, if that is not
// enough, of the other queues, and counts them in Stats().Dropped; a batch
// larger than MaxBytes on its own loses its leading entries, counted the
// same way. An entry larger than MaxBytes is refused (ErrTooLarge) in either
// mode, as is, without DropOldest, a batch larger than MaxBytes.
func (s *Spool) Append(entries []Entry, checkpoints map[string][]byte) error {
	var batchBytes int64
	for i, e := range entries {
		if e.Queue == "" {
			return fmt.Errorf("spool: entry %d has no queue", i)
		}
		if int64(len(e.Data)) > s.maxBytes {
			return fmt.Errorf("%w: entry %d for queue %q is %d bytes, the spool holds %d", ErrTooLarge, i, e.Queue, len(e.Data), s.maxBytes)
		}
		batchBytes += int64(len(e.Data))
	}
	for src := range checkpoints {
		if src == "" {
			return errors.New("spool: checkpoint with an empty source name")
		}
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}

	changes := map[string]queueState{}
	get := func(q string) queueState {
		if st, ok := changes[q]; ok {
			return st
		}
		return s.state[q]
	}

	// A batch larger than the whole spool: without DropOldest it can never
	// be stored; with it, the oldest part of the batch itself goes.
	skip := 0
	if batchBytes > s.maxBytes {
		if !s.drop {
			return fmt.Errorf("%w: batch of %d entries is %d bytes, the spool holds %d; append smaller batches", ErrTooLarge, len(entries), batchBytes, s.maxBytes)
		}
		for batchBytes > s.maxBytes {
			e := entries[skip]
			st := get(e.Queue)
			st.dropped++
			changes[e.Queue] = st
			batchBytes -= int64(len(e.Data))
			skip++
		}
	}
	need := s.total + batchBytes - s.maxBytes
	if need > 0 && !s.drop {
		return fmt.Errorf("%w: %d of %d bytes queued, batch of %d entries needs %d more", ErrFull, s.total, s.maxBytes, len(entries), batchBytes)
	}
	total := s.total
	if len(entries) == skip && len(checkpoints) == 0 && len(changes) == 0 {
		return nil
	}

	now := s.now().UnixNano()
	err := s.db.Update(func(tx *bolt.Tx) error {
		queues := tx.Bucket(bucketQueues)
		if need > 0 {
			freed, err := s.dropOldest(queues, entries[skip:], need, get, changes)
			if err != nil {
				return err
			}
			total -= freed
		}

		var (
			buckets = map[string]*bolt.Bucket{}
			key     [8]byte
		)
		for _, e := range entries[skip:] {
			b := buckets[e.Queue]
			if b == nil {
				var err error
				if b, err = queues.CreateBucketIfNotExists([]byte(e.Queue)); err != nil {
					return fmt.Errorf("create queue %q: %w", e.Queue, err)
				}
				// Keys only grow: fill pages completely.
				b.FillPercent = 1.0
				buckets[e.Queue] = b
			}
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			binary.BigEndian.PutUint64(key[:], seq)
			// bbolt keeps the value slice until commit: one allocation each.
			v := make([]byte, 8+len(e.Data))
			binary.BigEndian.PutUint64(v, uint64(now))
			copy(v[8:], e.Data)
			if err := b.Put(key[:], v); err != nil {
				return err
			}
			st := get(e.Queue)
			if st.entries == 0 {
				st.oldest = now
			}
			st.entries++
			st.bytes += int64(len(e.Data))
			changes[e.Queue] = st
			total += int64(len(e.Data))
		}

		if err := putCounters(tx, changes); err != nil {
			return err
		}
		cps := tx.Bucket(bucketCheckpoints)
		for src, v := range checkpoints {
			var err error
			if v == nil {
				err = cps.Delete([]byte(src))
			} else {
				err = cps.Put([]byte(src), v)
			}
			if err != nil {
				return fmt.Errorf("store checkpoint of %q: %w", src, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("spool append: %w", err)
	}

	s.mu.Lock()
	s.apply(changes, total)
	for q, st := range changes {
		if st.entries > 0 {
			if ch := s.waiters[q]; ch != nil {
				close(ch)
				delete(s.waiters, q)
			}
		}
	}
	s.mu.Unlock()
	return nil
}

// dropOldest deletes the oldest entries, first of the queues the batch goes
// to, then of the others, until need bytes are freed. It returns the bytes
// freed.
func (s *Spool) dropOldest(queues *bolt.Bucket, batch []Entry, need int64, get func(string) queueState, changes map[string]queueState) (int64, error) {
	affected := map[string]bool{}
	for _, e := range batch {
		affected[e.Queue] = true
	}
	var first, rest []string
	for q, st := range s.state {
		if st.entries == 0 {
			continue
		}
		if affected[q] {
			first = append(first, q)
		} else {
			rest = append(rest, q)
		}
	}
	sort.Strings(first)
	sort.Strings(rest)
	var freed int64
	for _, group := range [][]string{first, rest} {
		if freed >= need {
			break
		}
		n, err := s.dropFrom(queues, group, need-freed, get, changes)
		freed += n
		if err != nil {
			return freed, err
		}
	}
	if freed < need {
		// The counters said there was enough to drop.
		return freed, fmt.Errorf("spool counters are inconsistent: freed %d of %d bytes", freed, need)
	}
	return freed, nil
}

// dropFrom merges the heads of names by append time and deletes from the
// oldest until need bytes are freed.
func (s *Spool) dropFrom(queues *bolt.Bucket, names []string, need int64, get func(string) queueState, changes map[string]queueState) (int64, error) {
	type head struct {
		name string
		b    *bolt.Bucket
		c    *bolt.Cursor
		k, v []byte
		del  [][]byte
	}
	var heads []*head
	for _, q := range names {
		b := queues.Bucket([]byte(q))
		if b == nil {
			continue
		}
		h := &head{name: q, b: b, c: b.Cursor()}
		h.k, h.v = h.c.First()
		if h.k != nil {
			heads = append(heads, h)
		}
	}
	var freed int64
	for freed < need {
		var min *head
		for _, h := range heads {
			if h.k == nil {
				continue
			}
			if min == nil || appendTime(h.v) < appendTime(min.v) {
				min = h
			}
		}
		if min == nil {
			break
		}
		size := int64(len(min.v) - 8)
		min.del = append(min.del, append([]byte(nil), min.k...))
		freed += size
		st := get(min.name)
		st.entries--
		st.bytes -= size
		st.dropped++
		changes[min.name] = st
		min.k, min.v = min.c.Next()
	}
	for _, h := range heads {
		if len(h.del) == 0 {
			continue
		}
		st := changes[h.name]
		if h.k != nil {
			st.oldest = appendTime(h.v)
		}
		changes[h.name] = st
		for _, k := range h.del {
			if err := h.b.Delete(k); err != nil {
				return freed, err
			}
		}
	}
	return freed, nil
}

// Peek returns up to max entries, and at most maxBytes of Data (but always
// at least one entry when the queue has one), from the head of queue, in
// order, without removing them. A limit <= 0 is no limit.
func (s *Spool) Peek(queue string, max int, maxBytes int) ([]Item, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var items []Item
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketQueues).Bucket([]byte(queue))
		if b == nil {
			return nil
		}
		size := 0
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if max > 0 && len(items) >= max {
				break
			}
			if len(k) != 8 || len(v) < 8 {
				return fmt.Errorf("corrupt entry in queue %q (key %x)", queue, k)
			}
			n := len(v) - 8
			if maxBytes > 0 && len(items) > 0 && size+n > maxBytes {
				break
			}
			size += n
			items = append(items, Item{
				Seq:  binary.BigEndian.Uint64(k),
				Data: append([]byte(nil), v[8:]...),
				Time: time.Unix(0, appendTime(v)),
			})
		}
		return nil
	})
	if err != nil {
		if s.closed.Load() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("spool peek: %w", err)
	}
	return items, nil
}

// Ack removes the entries of queue with Seq <= upto, once the output has
// acknowledged them. Acknowledging what is already gone is not an error.
func (s *Spool) Ack(queue string, upto uint64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	cur, ok := s.state[queue]
	if !ok || cur.entries == 0 {
		return nil
	}
	st := cur
	var removed int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketQueues).Bucket([]byte(queue))
		if b == nil {
			return fmt.Errorf("queue %q has counters but no bucket", queue)
		}
		var del [][]byte
		c := b.Cursor()
		k, v := c.First()
		for ; k != nil && binary.BigEndian.Uint64(k) <= upto; k, v = c.Next() {
			del = append(del, append([]byte(nil), k...))
			st.entries--
			st.bytes -= int64(len(v) - 8)
		}
		if len(del) == 0 {
			return errNothing
		}
		if k != nil {
			st.oldest = appendTime(v)
		}
		removed = cur.bytes - st.bytes
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return putCounters(tx, map[string]queueState{queue: st})
	})
	if errors.Is(err, errNothing) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool ack: %w", err)
	}
	s.mu.Lock()
	s.apply(map[string]queueState{queue: st}, s.total-removed)
	s.mu.Unlock()
	return nil
}

// errNothing rolls back a transaction that found nothing to do.
var errNothing = errors.New("nothing to do")

// Checkpoint returns the checkpoint last stored for source, or nil.
func (s *Spool) Checkpoint(source string) ([]byte, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var cp []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketCheckpoints).Get([]byte(source)); v != nil {
			cp = append([]byte{}, v...)
		}
		return nil
	})
	if err != nil {
		if s.closed.Load() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("spool checkpoint: %w", err)
	}
	return cp, nil
}

// Stats returns the counters; it does not touch the file.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	stats := Stats{MaxBytes: s.maxBytes, Queues: make(map[string]QueueStats, len(s.state))}
	for q, qs := range s.state {
		out := QueueStats{Bytes: qs.bytes, Entries: qs.entries, Dropped: qs.dropped}
		if qs.entries > 0 {
			out.OldestTime = time.Unix(0, qs.oldest)
		}
		stats.Queues[q] = out
		stats.Bytes += qs.bytes
		stats.Entries += qs.entries
		stats.Dropped += qs.dropped
	}
	return stats
}

// Wait blocks until queue is non-empty (Append notifies it), ctx ends
// (returning ctx.Err()) or the spool is closed (ErrClosed).
func (s *Spool) Wait(ctx context.Context, queue string) error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.state[queue].entries > 0 {
		s.mu.Unlock()
		return nil
	}
	ch := s.waiters[queue]
	if ch == nil {
		ch = make(chan struct{})
		s.waiters[queue] = ch
	}
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closedCh:
		return ErrClosed
	}
}

// Ready returns a channel that is closed once queue is non-empty (at once
// when it is), so a caller can wait for the spool and something else
// together. A closed spool's channel is never closed: select on Done too.
func (s *Spool) Ready(queue string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state[queue].entries > 0 {
		return closedChan
	}
	ch := s.waiters[queue]
	if ch == nil {
		ch = make(chan struct{})
		s.waiters[queue] = ch
	}
	return ch
}

// QueueEntries is how many entries queue holds; it does not touch the file.
func (s *Spool) QueueEntries(queue string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state[queue].entries
}

// Done is closed when the spool is closed.
func (s *Spool) Done() <-chan struct{} { return s.closedCh }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// apply installs committed changes; mu must be held.
func (s *Spool) apply(changes map[string]queueState, total int64) {
	for q, st := range changes {
		s.state[q] = st
	}
	s.total = total
}

func putCounters(tx *bolt.Tx, changes map[string]queueState) error {
	b := tx.Bucket(bucketCounters)
	for q, st := range changes {
		v := make([]byte, 24)
		binary.BigEndian.PutUint64(v[0:], uint64(st.bytes))
		binary.BigEndian.PutUint64(v[8:], uint64(st.entries))
		binary.BigEndian.PutUint64(v[16:], st.dropped)
		if err := b.Put([]byte(q), v); err != nil {
			return fmt.Errorf("store counters of queue %q: %w", q, err)
		}
	}
	return nil
}

func appendTime(v []byte) int64 { return int64(binary.BigEndian.Uint64(v)) }

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// Move empties queue from into other queues in one transaction: route says,
// for each entry's data, which queues it goes to (none: it is dropped and
// counted in from's Dropped). Entries keep their append time, so lag stays
// honest. The forwarder uses it when a configuration renames or removes an
// output, so its backlog is neither stranded nor counted against the cap
// for ever. The cap is not checked: moved bytes were already counted, and a
// route to several queues may exceed it until they drain.
func (s *Spool) Move(from string, route func(data []byte) []string) (moved, dropped int, err error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return 0, 0, ErrClosed
	}
	cur, ok := s.state[from]
	if !ok || cur.entries == 0 {
		return 0, 0, nil
	}
	changes := map[string]queueState{}
	get := func(q string) queueState {
		if st, ok := changes[q]; ok {
			return st
		}
		return s.state[q]
	}
	total := s.total
	err = s.db.Update(func(tx *bolt.Tx) error {
		queues := tx.Bucket(bucketQueues)
		src := queues.Bucket([]byte(from))
		if src == nil {
			return fmt.Errorf("queue %q has counters but no bucket", from)
		}
		buckets := map[string]*bolt.Bucket{}
		var key [8]byte
		st := get(from)
		var del [][]byte
		c := src.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			del = append(del, append([]byte(nil), k...))
			size := int64(len(v) - 8)
			st.entries--
			st.bytes -= size
			total -= size
			targets := route(v[8:])
			if len(targets) == 0 {
				st.dropped++
				dropped++
				continue
			}
			for _, q := range targets {
				if q == from || q == "" {
					return fmt.Errorf("spool move: bad target queue %q", q)
				}
				b := buckets[q]
				if b == nil {
					var err error
					if b, err = queues.CreateBucketIfNotExists([]byte(q)); err != nil {
						return err
					}
					buckets[q] = b
				}
				seq, err := b.NextSequence()
				if err != nil {
					return err
				}
				binary.BigEndian.PutUint64(key[:], seq)
				if err := b.Put(key[:], append([]byte(nil), v...)); err != nil {
					return err
				}
				ts := get(q)
				if ts.entries == 0 {
					ts.oldest = appendTime(v)
				}
				ts.entries++
				ts.bytes += size
				changes[q] = ts
				total += size
			}
			moved++
		}
		for _, k := range del {
			if err := src.Delete(k); err != nil {
				return err
			}
		}
		changes[from] = st
		return putCounters(tx, changes)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("spool move: %w", err)
	}
	s.mu.Lock()
	s.apply(changes, total)
	for q, st := range changes {
		if st.entries > 0 {
			if ch := s.waiters[q]; ch != nil {
				close(ch)
				delete(s.waiters, q)
			}
		}
	}
	s.mu.Unlock()
	return moved, dropped, nil
}

// SetLimits changes the cap and the drop policy of an open spool, so a new
// configuration never has to reopen (and so briefly lose) the file.
func (s *Spool) SetLimits(maxBytes int64, dropOldest bool) error {
	if maxBytes < 0 {
		return fmt.Errorf("spool: negative MaxBytes %d", maxBytes)
	}
	if maxBytes == 0 {
		maxBytes = DefaultMaxBytes
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxBytes, s.drop = maxBytes, dropOldest
	return nil
}
