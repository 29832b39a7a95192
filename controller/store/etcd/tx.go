package etcd

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// tx is one optimistic transaction: reads record each key's mod revision
// (0 for a missing key), writes are buffered, and commit applies the
// writes only if no key read has changed since (compare-and-swap on
// revisions). On a conflict update runs the whole function again.
type tx struct {
	s     *Store
	ctx   context.Context
	reads map[string]int64
	vals  map[string][]byte
	ops   []clientv3.Op
}

// get reads key; ok is false when it does not exist.
func (t *tx) get(key string) ([]byte, bool, error) {
	if v, seen := t.vals[key]; seen {
		return v, v != nil, nil
	}
	rctx, cancel := context.WithTimeout(t.ctx, t.s.timeout)
	defer cancel()
	resp, err := t.s.cli.Get(rctx, key)
	if err != nil {
		return nil, false, t.s.wrapErr(t.ctx, err)
	}
	var v []byte
	var rev int64
	if len(resp.Kvs) > 0 {
		v, rev = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
	}
	t.reads[key], t.vals[key] = rev, v
	return v, v != nil, nil
}

// getJSON decodes key into v, or returns store.ErrNotFound.
func (t *tx) getJSON(key string, v any) error {
	raw, ok, err := t.get(key)
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrNotFound
	}
	return json.Unmarshal(raw, v)
}

func (t *tx) exists(key string) (bool, error) {
	_, ok, err := t.get(key)
	return ok, err
}

func (t *tx) put(key string, v []byte) { t.ops = append(t.ops, clientv3.OpPut(key, string(v))) }

func (t *tx) putJSON(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	t.put(key, b)
	return nil
}

func (t *tx) del(key string) { t.ops = append(t.ops, clientv3.OpDelete(key)) }

func (t *tx) delPrefix(prefix string) {
	t.ops = append(t.ops, clientv3.OpDelete(prefix, clientv3.WithPrefix()))
}

// update runs fn in a transaction until it commits without a conflict, fn
// fails, or ctx ends.
func (s *Store) update(ctx context.Context, fn func(t *tx) error) error {
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("controller store: %w", err)
		}
		t := &tx{s: s, ctx: ctx, reads: map[string]int64{}, vals: map[string][]byte{}}
		if err := fn(t); err != nil {
			return err
		}
		if len(t.ops) == 0 {
			return nil
		}
		cmps := make([]clientv3.Cmp, 0, len(t.reads))
		for k, rev := range t.reads {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		resp, err := s.cli.Txn(rctx).If(cmps...).Then(t.ops...).Commit()
		cancel()
		if err != nil {
			return s.wrapErr(ctx, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
}
