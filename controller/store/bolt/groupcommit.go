package bolt

import (
	"errors"
	"fmt"
	"sync"

	bbolt "go.etcd.io/bbolt"
)

// groupCommit folds concurrent writes into shared transactions, like
// bbolt's DB.Batch, but sized by the store rather than a timer: a write
// that finds no transaction running starts one at once, and every write
// that arrives while one commits goes into the next. DB.Batch closes a
// batch 10 ms after its first call and queues it behind the one
// committing, so while a commit's fsync took 100 ms (a loaded disk), ten
// small batches lined up behind it, each with its own fsync; a fan-out's
// 10,000 results were then tens of commits in a row, and a result waited
// for all those before it.
type groupCommit struct {
	db *bbolt.DB

	mu      sync.Mutex
	queue   []groupCall
	running bool
}

type groupCall struct {
	fn  func(*bbolt.Tx) error
	err chan error
}

// maxGroup bounds one transaction's writes: a write that fails is taken
// out and the rest run again (bbolt's rule), so a bigger group costs more
// per failure.
const maxGroup = 1000

// errSolo: the write failed inside a group; the caller runs it alone to
// get its own error.
var errSolo = errors.New("run alone")

// do runs fn in a shared write transaction and returns its error (fn may
// run more than once).
func (g *groupCommit) do(fn func(*bbolt.Tx) error) error {
	c := groupCall{fn: fn, err: make(chan error, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, c)
	if !g.running {
		g.running = true
		go g.loop()
	}
	g.mu.Unlock()
	err := <-c.err
	if err == errSolo {
		err = g.db.Update(fn)
	}
	return err
}

func (g *groupCommit) loop() {
	for {
		g.mu.Lock()
		n := min(len(g.queue), maxGroup)
		if n == 0 {
			g.running = false
			g.mu.Unlock()
			return
		}
		calls := g.queue[:n:n]
		g.queue = g.queue[n:]
		if len(g.queue) == 0 {
			g.queue = nil // let the old array go
		}
		g.mu.Unlock()
		g.run(calls)
	}
}

func (g *groupCommit) run(calls []groupCall) {
	for len(calls) > 0 {
		failed := -1
		err := g.db.Update(func(tx *bbolt.Tx) error {
			for i, c := range calls {
				if err := callSafely(c.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			calls[failed].err <- errSolo
			calls = append(calls[:failed], calls[failed+1:]...)
			continue
		}
		for _, c := range calls {
			c.err <- err
		}
		return
	}
}

// callSafely turns a panic in fn into an error, so that one write's panic
// does not take the others' transaction down with it; the write then runs
// alone in its caller's goroutine, where the panic is its caller's.
func callSafely(fn func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in a store write: %v", p)
		}
	}()
	return fn(tx)
}
