package etcd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bud-ecosystem/budfleet/controller/backup"
)

// volatile are the key kinds of live controllers (on their leases): not
// state to back up.
var volatile = []string{"controllers/", "presence/", "leader/"}

type dumpLine struct {
	K string `json:"k"` // relative to the prefix
	V []byte `json:"v"`
}

// Snapshot writes every key of the prefix at one revision (the live
// controllers' leased keys left out) to w as JSON lines.
func (s *Store) Snapshot(ctx context.Context, w io.Writer) (backup.Manifest, error) {
	m := backup.Manifest{Backend: backup.BackendEtcd, SchemaVersion: SchemaVersion}
	if err := ctx.Err(); err != nil {
		return m, err
	}
	enc := json.NewEncoder(w)
	end := clientv3.GetPrefixRangeEnd(s.p)
	from := s.p
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
		if m.Revision != 0 {
			opts = append(opts, clientv3.WithRev(m.Revision))
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		resp, err := s.cli.Get(rctx, from, opts...)
		cancel()
		if err != nil {
			return m, s.wrapErr(ctx, fmt.Errorf("snapshot the etcd prefix %s: %w", s.p, err))
		}
		m.Revision = resp.Header.Revision
		for _, kv := range resp.Kvs {
			rel := strings.TrimPrefix(string(kv.Key), s.p)
			if isVolatile(rel) {
				continue
			}
			if err := enc.Encode(dumpLine{K: rel, V: kv.Value}); err != nil {
				return m, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return m, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func isVolatile(rel string) bool {
	for _, v := range volatile {
		if strings.HasPrefix(rel, v) {
			return true
		}
	}
	return false
}

// Restore writes a Snapshot's payload under the store's prefix. The prefix
// must hold no state (only live controllers' keys) unless replace, which
// deletes what is there first. Keys go in transactions of 100.
func (s *Store) Restore(ctx context.Context, payload []byte, replace bool) (int, error) {
	var lines []dumpLine
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var l dumpLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return 0, fmt.Errorf("%w: etcd key %d: %v", backup.ErrDamaged, len(lines)+1, err)
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("%w: %v", backup.ErrDamaged, err)
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	resp, err := s.cli.Get(rctx, s.p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return 0, s.wrapErr(ctx, err)
	}
	for _, kv := range resp.Kvs {
		rel := strings.TrimPrefix(string(kv.Key), s.p)
		if isVolatile(rel) || rel == "meta/schema_version" {
			continue
		}
		if !replace {
			return 0, fmt.Errorf("the etcd prefix %s already holds a fleet's state (%s): restore into an empty prefix, or pass --force to replace it", s.p, rel)
		}
		break
	}
	if replace {
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		var ops []clientv3.Op
		for _, v := range []string{"tokens/", "nodes/", "commands/", "cmdseq/", "command_index/", "siem_seq", "siem_configs/", "clusters/", "campaigns/", "artifacts/", "artifact_names/", "machines/"} {
			ops = append(ops, clientv3.OpDelete(s.p+v, clientv3.WithPrefix()))
		}
		_, err := s.cli.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return 0, s.wrapErr(ctx, err)
		}
	}
	for start := 0; start < len(lines); start += 100 {
		var ops []clientv3.Op
		for _, l := range lines[start:min(start+100, len(lines))] {
			ops = append(ops, clientv3.OpPut(s.p+l.K, string(l.V)))
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		_, err := s.cli.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return start, s.wrapErr(ctx, err)
		}
	}
	return len(lines), nil
}
