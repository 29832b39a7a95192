package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Peers is what several controllers on one etcd share besides the store
// (controller.Peers):
//
//	P/controllers/<id>            -> the controller's agent address, on its lease
//	P/presence/<id>/<chunk>       -> JSON {node id: last heartbeat, Unix ms},
//	                                 on the controller's lease
//	P/leader/<name>/...           -> concurrency.Election keys
//
// Presence is written in chunks of PresenceChunk nodes, all of them in one
// transaction every publish interval: a controller's write rate to etcd
// does not grow with its heartbeats (10,000 agents on 3 controllers at the
// default 5 s: 0.6 transactions/s in all, 6e-5 per agent). When a
// controller dies its lease expires (LeaseTTL) and its presence and
// address go with it.
type Peers struct {
	s       *Store
	id      string
	addr    string
	ttl     int
	log     *slog.Logger
	session *concurrency.Session

	mu          sync.Mutex
	controllers map[string]string               // id -> address
	presence    map[string]map[string]time.Time // controller id -> node -> last
	chunks      int                             // chunks this controller last wrote
}

// PresenceChunk is how many nodes one presence key holds (well under
// etcd's 1.5 MiB request limit).
const PresenceChunk = 2000

// DefaultLeaseTTL is how long a dead controller's presence, address and
// leaderships outlive it, in seconds.
const DefaultLeaseTTL = 10

// NewPeers registers this controller (id, its agent address) on s's etcd
// and starts following the others; Close unregisters it.
func NewPeers(ctx context.Context, s *Store, id, addr string, leaseTTL int, log *slog.Logger) (*Peers, error) {
	if leaseTTL <= 0 {
		leaseTTL = DefaultLeaseTTL
	}
	if log == nil {
		log = slog.Default()
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(leaseTTL), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, s.wrapErr(ctx, fmt.Errorf("etcd lease for controller %s: %w", id, err))
	}
	p := &Peers{s: s, id: id, addr: addr, ttl: leaseTTL, log: log, session: sess,
		controllers: map[string]string{}, presence: map[string]map[string]time.Time{}}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.cli.Put(rctx, s.p+"controllers/"+id, addr, clientv3.WithLease(sess.Lease())); err != nil {
		sess.Close()
		return nil, s.wrapErr(ctx, fmt.Errorf("register controller %s: %w", id, err))
	}
	return p, nil
}

// ID is this controller's id among its peers.
func (p *Peers) ID() string { return p.id }

// Close ends this controller's lease: its address, presence and
// leaderships go at once rather than at the lease's expiry.
func (p *Peers) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.session.Close()
}

// Follow keeps the caches of the controller set and presence up to date
// until ctx ends: a read, then a watch from the revision after it.
func (p *Peers) Follow(ctx context.Context) error {
	for ctx.Err() == nil {
		rev, err := p.load(ctx)
		if err == nil {
			err = p.watch(ctx, rev+1)
		}
		if ctx.Err() != nil {
			return nil
		}
		p.log.Warn("following the other controllers in etcd; retrying", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (p *Peers) load(ctx context.Context) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, p.s.timeout)
	defer cancel()
	txn, err := p.s.cli.Txn(rctx).Then(
		clientv3.OpGet(p.s.p+"controllers/", clientv3.WithPrefix()),
		clientv3.OpGet(p.s.p+"presence/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.controllers = map[string]string{}
	p.presence = map[string]map[string]time.Time{}
	for _, kv := range txn.Responses[0].GetResponseRange().Kvs {
		p.controllers[strings.TrimPrefix(string(kv.Key), p.s.p+"controllers/")] = string(kv.Value)
	}
	for _, kv := range txn.Responses[1].GetResponseRange().Kvs {
		p.applyPresence(string(kv.Key), kv.Value)
	}
	return txn.Header.Revision, nil
}

// presenceKey splits P/presence/<id>/<chunk>.
func (p *Peers) presenceKey(key string) (ctrl, chunk string) {
	rest := strings.TrimPrefix(key, p.s.p+"presence/")
	ctrl, chunk, _ = strings.Cut(rest, "/")
	return ctrl, chunk
}

// applyPresence merges one chunk (p.mu held); nil value deletes it.
func (p *Peers) applyPresence(key string, v []byte) {
	ctrl, chunk := p.presenceKey(key)
	m := p.presence[ctrl+"/"+chunk]
	if v == nil {
		delete(p.presence, ctrl+"/"+chunk)
		return
	}
	var raw map[string]int64
	if err := json.Unmarshal(v, &raw); err != nil {
		return
	}
	m = make(map[string]time.Time, len(raw))
	for n, ms := range raw {
		m[n] = time.UnixMilli(ms)
	}
	p.presence[ctrl+"/"+chunk] = m
}

func (p *Peers) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	cp, pp := p.s.p+"controllers/", p.s.p+"presence/"
	wc := p.s.cli.Watch(wctx, cp, clientv3.WithPrefix(), clientv3.WithRev(rev))
	wp := p.s.cli.Watch(wctx, pp, clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-wc:
		case resp, ok = <-wp:
		}
		if !ok {
			return fmt.Errorf("watch closed")
		}
		if err := resp.Err(); err != nil {
			return err
		}
		p.mu.Lock()
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			switch {
			case strings.HasPrefix(key, cp):
				id := strings.TrimPrefix(key, cp)
				if ev.Type == clientv3.EventTypeDelete {
					delete(p.controllers, id)
				} else {
					p.controllers[id] = string(ev.Kv.Value)
				}
			default:
				var v []byte
				if ev.Type != clientv3.EventTypeDelete {
					v = ev.Kv.Value
				}
				p.applyPresence(key, v)
			}
		}
		p.mu.Unlock()
	}
}

// PublishPresence writes this controller's sessions (nodes and last
// heartbeats) in one transaction, on its lease.
func (p *Peers) PublishPresence(ctx context.Context, seen map[string]time.Time) error {
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var ops []clientv3.Op
	base := p.s.p + "presence/" + p.id + "/"
	p.mu.Lock()
	lease := p.session.Lease()
	p.mu.Unlock()
	n := 0
	for start := 0; start < len(ids); start += PresenceChunk {
		chunk := map[string]int64{}
		for _, id := range ids[start:min(start+PresenceChunk, len(ids))] {
			chunk[id] = seen[id].UnixMilli()
		}
		b, err := json.Marshal(chunk)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(base+strconv.Itoa(n), string(b), clientv3.WithLease(lease)))
		n++
	}
	p.mu.Lock()
	old := p.chunks
	p.mu.Unlock()
	for i := n; i < old; i++ {
		ops = append(ops, clientv3.OpDelete(base+strconv.Itoa(i)))
	}
	if len(ops) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, p.s.timeout)
	defer cancel()
	if _, err := p.s.cli.Txn(rctx).Then(ops...).Commit(); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			// Cut off from etcd longer than the lease: take a new one.
			if rerr := p.renew(ctx); rerr != nil {
				return p.s.wrapErr(ctx, rerr)
			}
		}
		return p.s.wrapErr(ctx, err)
	}
	p.mu.Lock()
	p.chunks = n
	p.mu.Unlock()
	return nil
}

// renew takes a new lease and registers the controller on it again.
func (p *Peers) renew(ctx context.Context) error {
	sess, err := concurrency.NewSession(p.s.cli, concurrency.WithTTL(p.ttl), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, p.s.timeout)
	defer cancel()
	if _, err := p.s.cli.Put(rctx, p.s.p+"controllers/"+p.id, p.addr, clientv3.WithLease(sess.Lease())); err != nil {
		sess.Close()
		return err
	}
	p.mu.Lock()
	old := p.session
	p.session, p.chunks = sess, 0
	p.mu.Unlock()
	old.Close()
	p.log.Info("controller lease renewed after losing it", "controller_id", p.id)
	return nil
}

// Presence returns the newest last heartbeat another live controller
// published for the node.
func (p *Peers) Presence(nodeID string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var best time.Time
	found := false
	for key, m := range p.presence {
		ctrl, _, _ := strings.Cut(key, "/")
		if ctrl == p.id {
			continue
		}
		if _, live := p.controllers[ctrl]; !live {
			continue
		}
		if t, ok := m[nodeID]; ok && (!found || t.After(best)) {
			best, found = t, true
		}
	}
	return best, found
}

// Controllers lists the live controllers' agent addresses, sorted.
func (p *Peers) Controllers() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.controllers))
	for _, a := range p.controllers {
		out = append(out, a)
	}
	sort.Strings(out)
	if len(out) == 0 && p.addr != "" {
		out = append(out, p.addr)
	}
	return out
}

// WatchQueued calls fn with the node of every command any controller
// queues, until ctx ends: a watch on the queue's keys (a new key is a
// queued command), not a poll.
func (p *Peers) WatchQueued(ctx context.Context, fn func(nodeID string)) error {
	prefix := p.s.p + "commands/"
	for ctx.Err() == nil {
		wc := p.s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithFilterDelete())
		for resp := range wc {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				if ev.Kv.Version != 1 { // an update, not a new command
					continue
				}
				node, _, ok := strings.Cut(strings.TrimPrefix(string(ev.Kv.Key), prefix), "\x00")
				if ok {
					fn(node)
				}
			}
		}
		// The watch broke (no leader, compaction): commands queued
		// meanwhile are delivered at the nodes' next connect, or by the
		// next event for them. Wake every node once to be sure.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			fn("")
		}
	}
	return nil
}

// WatchDeleted calls fn with every node deleted through any controller,
// until ctx ends.
func (p *Peers) WatchDeleted(ctx context.Context, fn func(nodeID string)) error {
	prefix := p.s.p + "nodes/"
	for ctx.Err() == nil {
		for resp := range p.s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithFilterPut()) {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				fn(strings.TrimPrefix(string(ev.Kv.Key), prefix))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

// Lead runs fn while this controller leads name; again whenever it wins
// the election anew, until ctx ends. Each term has its own lease: fn's
// context ends when that lease cannot be kept alive (LeaseTTL), so a
// leader cut off from etcd stops before another can be elected.
func (p *Peers) Lead(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	for ctx.Err() == nil {
		err := p.term(ctx, name, fn)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			p.log.Warn("leader election", "singleton", name, "error", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (p *Peers) term(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	sess, err := concurrency.NewSession(p.s.cli, concurrency.WithTTL(p.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, p.s.p+"leader/"+name)
	if err := el.Campaign(ctx, p.id); err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	err = fn(lctx)
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), p.s.timeout)
	defer rcancel()
	_ = el.Resign(rctx)
	return err
}

// Leader returns the id of name's current leader; "" when none.
func (p *Peers) Leader(ctx context.Context, name string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, p.s.timeout)
	defer cancel()
	resp, err := p.s.cli.Get(rctx, p.s.p+"leader/"+name+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", p.s.wrapErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}
