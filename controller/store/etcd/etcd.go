// Package etcd is the controller's store for several controllers: a
// store.Store in an etcd cluster (go.etcd.io/etcd/client/v3), every key
// under one prefix, values JSON as in store/bolt.
//
// Key layout (schema version 1), P being the prefix (default /budfleet):
//
//	P/meta/schema_version            -> decimal schema version
//	P/tokens/<token id>              -> JSON store.Token
//	P/nodes/<node id>                -> JSON store.Node, inventory as in bolt
//	P/commands/<node id> NUL <seq>   -> JSON store.Command; seq is 16 hex
//	                                    digits, so keys sort in queue order
//	P/cmdseq/<node id>               -> decimal last seq of the node's queue
//	P/command_index/<command id>     -> <node id> NUL <seq>
//	P/siem_seq                       -> decimal last SIEM config version
//	P/siem_configs/<version 16 hex>  -> JSON store.SIEMConfig
//	P/clusters/<name>                -> JSON store.Cluster
//	P/campaigns/<id>                 -> JSON store.Campaign
//	P/artifacts/<digest>             -> JSON store.Artifact
//	P/artifact_names/<name> NUL <version> NUL <platform> -> digest
//	P/machines/<id>                  -> JSON store.Machine
//	P/operators/<name>               -> JSON store.Operator
//	P/command_batches/<batch id>     -> JSON store.CommandBatch
//	P/batch_commands/<batch id>/<command id> -> the command's state, moved
//	                                    with it (batch.go); added to
//	                                    schema 1 as new keys only
//
// Every change is one etcd transaction that compares the mod revision of
// each key it read with what it read (optimistic concurrency, see tx.go):
// two controllers spending the same token's last use, or moving the same
// command on, conflict, and the loser re-reads and retries. Nothing is a
// read-modify-write race.
//
// DeleteNode removes the node, its queue and its sequence in one
// transaction; the queue's command_index entries are then removed in
// batches after it. An index entry that outlives its command (a
// controller died between the two) is ignored: lookups check that the
// command it points at carries its id, and EnqueueCommand reuses it.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// SchemaVersion is the key layout this build writes.
const SchemaVersion = 1

// DefaultPrefix is where the store keeps its keys unless told otherwise.
const DefaultPrefix = "/budfleet"

// ErrNewerSchema: a newer bud-controller wrote the prefix.
var ErrNewerSchema = errors.New("the etcd prefix was written by a newer bud-controller")

// ErrUnavailable wraps an etcd request that did not complete: no quorum,
// or no member reachable. Writes are refused then, never half done.
var ErrUnavailable = fmt.Errorf("etcd is unavailable (no quorum or no member reachable): %w", store.ErrUnavailable)

// Options configure Open.
type Options struct {
	// Endpoints are the etcd members' client URLs.
	Endpoints []string
	// CAFile, CertFile, KeyFile: TLS to etcd (client certificate
	// optional). Without CAFile the endpoints are dialed as they say.
	CAFile, CertFile, KeyFile string
	// Prefix is where the keys live (DefaultPrefix when empty).
	Prefix string
	// DialTimeout bounds the first connection (default 5 s).
	DialTimeout time.Duration
	// RequestTimeout bounds each etcd request (default 5 s): without a
	// quorum a call fails with ErrUnavailable after it.
	RequestTimeout time.Duration
	// Client, when set, is used instead of dialing (the store does not
	// close it).
	Client *clientv3.Client
}

// Store is the controller's state in etcd.
type Store struct {
	cli       *clientv3.Client
	ownClient bool
	p         string // prefix, with a trailing "/"
	timeout   time.Duration
}

var _ store.Store = (*Store)(nil)

// TLSConfig builds the client TLS configuration of opts; nil without CAFile
// and CertFile.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Open connects to etcd and checks (or writes) the schema version.
func Open(ctx context.Context, opts Options) (*Store, error) {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	prefix = strings.TrimRight(prefix, "/") + "/"
	s := &Store{p: prefix, timeout: opts.RequestTimeout}
	if s.timeout <= 0 {
		s.timeout = 5 * time.Second
	}
	if opts.Client != nil {
		s.cli = opts.Client
	} else {
		if len(opts.Endpoints) == 0 {
			return nil, errors.New("etcd store: no endpoints (--etcd-endpoints)")
		}
		tlsCfg, err := TLSConfig(opts.CAFile, opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, err
		}
		dt := opts.DialTimeout
		if dt <= 0 {
			dt = 5 * time.Second
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:            opts.Endpoints,
			TLS:                  tlsCfg,
			DialTimeout:          dt,
			DialKeepAliveTime:    10 * time.Second,
			DialKeepAliveTimeout: 5 * time.Second,
			Context:              context.WithoutCancel(ctx),
			Logger:               zap.NewNop(),
		})
		if err != nil {
			return nil, fmt.Errorf("etcd store: connect %s: %w", strings.Join(opts.Endpoints, ","), err)
		}
		s.cli, s.ownClient = cli, true
	}
	if err := s.checkSchema(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Client is the store's etcd client (for leases, elections and watches).
func (s *Store) Client() *clientv3.Client { return s.cli }

// Prefix is the store's key prefix, with its trailing slash.
func (s *Store) Prefix() string { return s.p }

// Close releases the client when the store dialed it.
func (s *Store) Close() error {
	if s.ownClient {
		return s.cli.Close()
	}
	return nil
}

func (s *Store) checkSchema(ctx context.Context) error {
	key := s.p + "meta/schema_version"
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, strconv.Itoa(SchemaVersion))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return s.wrapErr(ctx, fmt.Errorf("etcd store: read the schema version: %w", err))
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return errors.New("etcd store: schema version vanished")
	}
	v, err := strconv.Atoi(string(kvs[0].Value))
	if err != nil {
		return fmt.Errorf("etcd store: %s is %q, not a schema version: is the prefix someone else's?", key, kvs[0].Value)
	}
	if v > SchemaVersion {
		return fmt.Errorf("etcd store: %w (schema version %d, this build writes %d): upgrade bud-controller", ErrNewerSchema, v, SchemaVersion)
	}
	return nil
}

// wrapErr says what a failed etcd call means to the caller: its own
// context's end, or etcd being unavailable.
func (s *Store) wrapErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("controller store: %w", cerr)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "etcdserver: ") || strings.Contains(err.Error(), "connection") {
		return fmt.Errorf("controller store: %w: %v", ErrUnavailable, err)
	}
	return fmt.Errorf("controller store: %w", err)
}

func seqKey(seq uint64) string { return fmt.Sprintf("%016x", seq) }

// get reads one key outside a transaction.
func (s *Store) get(ctx context.Context, key string) ([]byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("controller store: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Get(rctx, key)
	if err != nil {
		return nil, false, s.wrapErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	return resp.Kvs[0].Value, true, nil
}

// list reads every key under prefix in key order, in pages, all at one
// revision.
func (s *Store) list(ctx context.Context, prefix string, each func(key string, v []byte) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("controller store: %w", err)
	}
	const page = 1000
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	var rev int64
	for {
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(rctx, from, opts...)
		cancel()
		if err != nil {
			return s.wrapErr(ctx, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			if err := each(string(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func getJSON(ctx context.Context, s *Store, key string, v any) error {
	raw, ok, err := s.get(ctx, key)
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrNotFound
	}
	return json.Unmarshal(raw, v)
}

func mustJSON(v any) ([]byte, error) { return json.Marshal(v) }
