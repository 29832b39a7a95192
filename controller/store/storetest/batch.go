package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

var batchTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"CommandBatches", testCommandBatches},
	{"CommandBatchRefused", testCommandBatchRefused},
	{"CommandBatchConcurrentResults", testCommandBatchConcurrentResults},
	{"CommandBatchDeleteNode", testCommandBatchDeleteNode},
	{"CommandBatchCanceled", testCommandBatchCanceled},
	{"ListBatchCommands", testListBatchCommands},
}

// NewBatch is a batch with every field set.
func NewBatch(id string) store.CommandBatch {
	return store.CommandBatch{ID: id, Kind: "exec", Params: map[string]string{"a": "b"}, Selector: "all", CreatedAt: Base, CreatedBy: "op"}
}

// batchCmds makes n commands of batch b spread over nodes in turn, so
// one node gets several commands of the same batch (and of one etcd
// transaction).
func batchCmds(b string, n int, nodes ...string) []store.Command {
	var cs []store.Command
	for i := range n {
		c := Cmd(fmt.Sprintf("%s-c%03d", b, i), nodes[i%len(nodes)], store.CommandPending)
		c.BatchID = b
		cs = append(cs, c)
	}
	return cs
}

func testCommandBatches(t *testing.T, s store.Store) {
	for _, id := range []string{"n1", "n2", "n3"} {
		EnrollNode(t, s, NewNode(id, "h"+id))
	}
	must(t, s.EnqueueCommand(ctx(t), Cmd("alone", "n1", store.CommandPending)))
	// More commands than one etcd transaction holds.
	cs := batchCmds("b1", 80, "n1", "n2", "n3")
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b1"), cs))

	b, n, err := s.GetCommandBatch(ctx(t), "b1")
	must(t, err)
	if !reflect.DeepEqual(b, NewBatch("b1")) {
		t.Errorf("GetCommandBatch = %+v, want %+v", b, NewBatch("b1"))
	}
	if want := (store.BatchCounts{Total: 80, Pending: 80}); n != want {
		t.Errorf("counts = %+v, want %+v", n, want)
	}
	// Each node's queue holds its commands after what was there, in order.
	var want1 []string
	want1 = append(want1, "alone")
	for i := 0; i < 80; i += 3 {
		want1 = append(want1, cs[i].ID)
	}
	got, err := s.PendingCommands(ctx(t), "n1")
	must(t, err)
	if !reflect.DeepEqual(CommandIDs(got), want1) {
		t.Errorf("n1 queue = %v, want %v", CommandIDs(got), want1)
	}
	c, err := s.GetCommand(ctx(t), cs[1].ID)
	must(t, err)
	if !reflect.DeepEqual(c, cs[1]) {
		t.Errorf("GetCommand = %+v, want %+v", c, cs[1])
	}

	// The counts follow UpdateCommand.
	move := func(id string, st store.CommandState) {
		t.Helper()
		_, err := s.UpdateCommand(ctx(t), id, func(c *store.Command) error { c.State = st; return nil })
		must(t, err)
	}
	move(cs[0].ID, store.CommandDelivered)
	move(cs[1].ID, store.CommandDelivered)
	move(cs[1].ID, store.CommandSucceeded)
	move(cs[2].ID, store.CommandFailed)
	move("alone", store.CommandSucceeded) // not in the batch
	_, n, err = s.GetCommandBatch(ctx(t), "b1")
	must(t, err)
	if want := (store.BatchCounts{Total: 80, Pending: 77, Delivered: 1, Succeeded: 1, Failed: 1}); n != want {
		t.Errorf("counts after updates = %+v, want %+v", n, want)
	}

	_, _, err = s.GetCommandBatch(ctx(t), "nope")
	notFound(t, "GetCommandBatch(nope)", err, "nope")

	// An empty batch is a batch.
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b0"), nil))
	if _, n, err := s.GetCommandBatch(ctx(t), "b0"); err != nil || n != (store.BatchCounts{}) {
		t.Errorf("empty batch = %+v, %v", n, err)
	}
}

// A refused batch changes nothing.
func testCommandBatchRefused(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	EnrollNode(t, s, NewNode("n2", "h2"))
	must(t, s.EnqueueCommand(ctx(t), Cmd("taken", "n2", store.CommandPending)))
	unchanged := func(what, batch string) {
		t.Helper()
		_, _, err := s.GetCommandBatch(ctx(t), batch)
		notFound(t, what+": GetCommandBatch", err, batch)
		all, err := s.ListCommands(ctx(t), "")
		must(t, err)
		if !reflect.DeepEqual(CommandIDs(all), []string{"taken"}) {
			t.Errorf("%s: commands stored = %v, want only taken", what, CommandIDs(all))
		}
	}

	// An unknown node far into the batch (past etcd's first transaction).
	cs := batchCmds("b1", 60, "n1", "n2")
	cs[55].NodeID = "ghost"
	err := s.EnqueueCommands(ctx(t), NewBatch("b1"), cs)
	notFound(t, "EnqueueCommands with an unknown node", err, "ghost")
	unchanged("unknown node", "b1")

	cs = batchCmds("b2", 3, "n1", "n2")
	cs[0].ID = "taken"
	if err := s.EnqueueCommands(ctx(t), NewBatch("b2"), cs); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("EnqueueCommands with a taken command id = %v, want ErrAlreadyExists", err)
	}
	unchanged("taken command id", "b2")

	cs = batchCmds("b3", 2, "n1")
	cs[1].BatchID = "other"
	if err := s.EnqueueCommands(ctx(t), NewBatch("b3"), cs); err == nil {
		t.Error("EnqueueCommands with a command of another batch succeeded")
	}
	unchanged("foreign batch id", "b3")

	must(t, s.EnqueueCommands(ctx(t), NewBatch("b4"), batchCmds("b4", 2, "n1")))
	if err := s.EnqueueCommands(ctx(t), NewBatch("b4"), batchCmds("b4x", 0)); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("EnqueueCommands with a taken batch id = %v, want ErrAlreadyExists", err)
	}
	if _, n, err := s.GetCommandBatch(ctx(t), "b4"); err != nil || n.Total != 2 {
		t.Errorf("b4 after a refused reuse = %+v, %v", n, err)
	}
}

// Results arriving at once from many sessions are all counted.
func testCommandBatchConcurrentResults(t *testing.T, s store.Store) {
	var nodes []string
	for i := range 10 {
		id := fmt.Sprintf("n%d", i)
		EnrollNode(t, s, NewNode(id, "h"+id))
		nodes = append(nodes, id)
	}
	cs := batchCmds("b", 50, nodes...)
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b"), cs))
	var wg sync.WaitGroup
	errs := make(chan error, len(cs))
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := store.CommandSucceeded
			if i%5 == 0 {
				st = store.CommandFailed
			}
			_, err := s.UpdateCommand(ctx(t), c.ID, func(c *store.Command) error { c.State = st; return nil })
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	_, n, err := s.GetCommandBatch(ctx(t), "b")
	must(t, err)
	if want := (store.BatchCounts{Total: 50, Succeeded: 40, Failed: 10}); n != want {
		t.Errorf("counts = %+v, want %+v", n, want)
	}
}

func testCommandBatchDeleteNode(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	EnrollNode(t, s, NewNode("n2", "h2"))
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b"), batchCmds("b", 6, "n1", "n2")))
	must(t, s.DeleteNode(ctx(t), "n1"))
	_, n, err := s.GetCommandBatch(ctx(t), "b")
	must(t, err)
	if want := (store.BatchCounts{Total: 3, Pending: 3}); n != want {
		t.Errorf("counts after deleting n1 = %+v, want %+v", n, want)
	}
}

func testCommandBatchCanceled(t *testing.T, s store.Store) {
	EnrollNode(t, s, NewNode("n1", "h1"))
	c, cancel := context.WithCancel(ctx(t))
	cancel()
	if err := s.EnqueueCommands(c, NewBatch("b"), batchCmds("b", 2, "n1")); !errors.Is(err, context.Canceled) {
		t.Errorf("EnqueueCommands with a done context = %v", err)
	}
	if _, _, err := s.GetCommandBatch(c, "b"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetCommandBatch with a done context = %v", err)
	}
	_, _, err := s.GetCommandBatch(ctx(t), "b")
	notFound(t, "GetCommandBatch after a canceled EnqueueCommands", err, "b")
}

// ListBatchCommands is ListCommands filtered by batch, in the same order,
// as the commands move and after a node is deleted; an unknown batch is
// ErrNotFound.
func testListBatchCommands(t *testing.T, s store.Store) {
	// Node ids whose order as strings differs from their enrolment's,
	// one a prefix of another.
	for _, id := range []string{"nb", "na", "na-2", "nc"} {
		EnrollNode(t, s, NewNode(id, "h"+id))
	}
	must(t, s.EnqueueCommand(ctx(t), Cmd("alone", "na", store.CommandPending)))
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b1"), batchCmds("b1", 130, "nb", "na", "na-2")))
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b2"), batchCmds("b2", 7, "nc", "na")))
	want := func(batch string) []store.Command {
		t.Helper()
		all, err := s.ListCommands(ctx(t), "")
		must(t, err)
		var out []store.Command
		for _, c := range all {
			if c.BatchID == batch {
				out = append(out, c)
			}
		}
		return out
	}
	check := func(when, batch string, n int) {
		t.Helper()
		got, err := s.ListBatchCommands(ctx(t), batch)
		must(t, err)
		w := want(batch)
		if len(got) != n || !reflect.DeepEqual(got, w) {
			t.Errorf("%s: ListBatchCommands(%s) = %d commands %v, want the %d of ListCommands %v", when, batch, len(got), CommandIDs(got), len(w), CommandIDs(w))
		}
	}
	check("queued", "b1", 130)
	check("queued", "b2", 7)
	_, err := s.UpdateCommand(ctx(t), "b1-c004", func(c *store.Command) error {
		c.State, c.Message = store.CommandSucceeded, "done"
		return nil
	})
	must(t, err)
	check("after a result", "b1", 130)
	must(t, s.DeleteNode(ctx(t), "na"))
	check("after deleting na", "b1", 87)
	check("after deleting na", "b2", 4)

	_, err = s.ListBatchCommands(ctx(t), "nope")
	notFound(t, "ListBatchCommands(nope)", err, "nope")
	must(t, s.EnqueueCommands(ctx(t), NewBatch("b0"), nil))
	if got, err := s.ListBatchCommands(ctx(t), "b0"); err != nil || len(got) != 0 {
		t.Errorf("empty batch: %v, %v", CommandIDs(got), err)
	}
}
