package fleetsim

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// The floor: what one idle mutual-TLS gRPC bidi stream with a heartbeat
// costs a server built from grpc-go's defaults. It speaks the agent
// service's Connect with the same Heartbeat message the agents send, over
// TLS 1.3 with ECDSA P-256 certificates as the project's PKI issues, and
// does nothing else: no store, no modules, no welcome. The controller's
// figures are divided by the floor's, measured on the same machine in the
// same run.

// FloorPKI writes, when dir has none yet, a CA and a server certificate for
// 127.0.0.1 (ECDSA P-256, as pki issues), and loads them.
type FloorPKI struct {
	CA     *x509.Certificate
	CAKey  *ecdsa.PrivateKey
	Server tls.Certificate
}

// LoadFloorPKI makes dir's CA and server certificate if missing and loads
// them; the floor's clients mint their own certificates from the CA key.
func LoadFloorPKI(dir string) (*FloorPKI, error) {
	caPath, caKeyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	srvPath, srvKeyPath := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if _, err := os.Stat(caPath); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		caKey, err := pki.NewKey()
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleetsim floor CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		ca, _ := x509.ParseCertificate(der)
		srvDER, srvKey, err := issue(ca, caKey, "127.0.0.1", x509.ExtKeyUsageServerAuth, 2)
		if err != nil {
			return nil, err
		}
		for path, b := range map[string][]byte{caPath: pki.EncodeCert(ca), srvPath: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})} {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				return nil, err
			}
		}
		for path, k := range map[string]*ecdsa.PrivateKey{caKeyPath: caKey, srvKeyPath: srvKey} {
			b, err := pki.EncodeKey(k)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				return nil, err
			}
		}
	}
	p := &FloorPKI{}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(caPEM)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM", caPath)
	}
	if p.CA, err = x509.ParseCertificate(blk.Bytes); err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(caKeyPath)
	if err != nil {
		return nil, err
	}
	blk, _ = pem.Decode(keyPEM)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM", caKeyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	var ok bool
	if p.CAKey, ok = k.(*ecdsa.PrivateKey); !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", caKeyPath)
	}
	if p.Server, err = tls.LoadX509KeyPair(srvPath, srvKeyPath); err != nil {
		return nil, err
	}
	return p, nil
}

var serial atomic.Int64

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage, sn int64) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(sn), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	return der, key, err
}

// FloorServer is the floor's server: it accepts Connect streams from
// clients with a certificate of its CA, reads their heartbeats, and on
// /fanout sends one command to every stream and times the results (the
// floor of P3).
type FloorServer struct {
	agentv1.UnimplementedAgentServiceServer
	streams    atomic.Int64
	heartbeats atomic.Int64

	mu   sync.Mutex
	open map[*floorConn]struct{}
	fan  *floorFan // the fan-out in progress, if any
}

// floorConn is one open stream: the fan-out and nothing else sends on it,
// so its mutex only keeps two fan-outs from interleaving Sends.
type floorConn struct {
	mu     sync.Mutex
	stream agentv1.AgentService_ConnectServer
}

// floorFan is one fan-out: when it started, the commands it sent, and how
// long each result took to come back.
type floorFan struct {
	start time.Time
	want  map[string]bool
	lat   []time.Duration
	done  chan struct{}
}

// Connect reads until the client goes, counting heartbeats and timing the
// results of a fan-out.
func (f *FloorServer) Connect(stream agentv1.AgentService_ConnectServer) error {
	f.streams.Add(1)
	defer f.streams.Add(-1)
	c := &floorConn{stream: stream}
	f.mu.Lock()
	if f.open == nil {
		f.open = map[*floorConn]struct{}{}
	}
	f.open[c] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.open, c)
		f.mu.Unlock()
	}()
	for {
		m, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if m.GetHeartbeat() != nil {
			f.heartbeats.Add(1)
		}
		if r := m.GetCommandResult(); r != nil {
			f.result(r.GetCommandId())
		}
	}
}

func (f *FloorServer) result(id string) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	fan := f.fan
	if fan == nil || !fan.want[id] {
		return
	}
	delete(fan.want, id)
	fan.lat = append(fan.lat, now.Sub(fan.start))
	if len(fan.want) == 0 {
		close(fan.done)
	}
}

// FanoutResult is what /fanout answers: how many streams were sent a
// command, and each result's time from the start of the fan-out, in
// arrival order.
type FanoutResult struct {
	Sent      int     `json:"sent"`
	LatencyNS []int64 `json:"latency_ns"`
}

// Fanout sends one command to every open stream, as the controller's
// CreateCommands does for all nodes, and waits until every result is back
// or ctx ends.
func (f *FloorServer) Fanout(ctx context.Context) (FanoutResult, error) {
	f.mu.Lock()
	if f.fan != nil {
		f.mu.Unlock()
		return FanoutResult{}, errors.New("a fan-out is already running")
	}
	conns := make([]*floorConn, 0, len(f.open))
	for c := range f.open {
		conns = append(conns, c)
	}
	fan := &floorFan{start: time.Now(), want: make(map[string]bool, len(conns)), done: make(chan struct{})}
	ids := make([]string, len(conns))
	for i := range conns {
		ids[i] = fmt.Sprintf("floor-%d-%d", fan.start.UnixNano(), i)
		fan.want[ids[i]] = true
	}
	f.fan = fan
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.fan = nil
		f.mu.Unlock()
	}()
	created := timestamppb.New(fan.start)
	for i, c := range conns {
		m := &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{Id: ids[i], Kind: "floor.ping", CreatedAt: created}}}
		c.mu.Lock()
		err := c.stream.Send(m)
		c.mu.Unlock()
		if err != nil {
			// A stream that broke: its result will not come.
			f.result(ids[i])
		}
	}
	if len(conns) == 0 {
		return FanoutResult{}, nil
	}
	select {
	case <-fan.done:
	case <-ctx.Done():
		return FanoutResult{}, fmt.Errorf("fan-out to %d streams: %w", len(conns), ctx.Err())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := FanoutResult{Sent: len(conns), LatencyNS: make([]int64, len(fan.lat))}
	for i, d := range fan.lat {
		r.LatencyNS[i] = d.Nanoseconds()
	}
	return r, nil
}

// ServeFloor serves the floor on lis (gRPC, grpc-go's default options but
// the credentials) and its metrics on mlis until ctx ends: /metrics has
// the Go runtime's heap and goroutines as the controller's /metrics names
// them, and /debug/pprof/ is there so a harness can force a GC
// (heap?gc=1) before it reads the heap, as it does on the controller.
func ServeFloor(ctx context.Context, lis, mlis net.Listener, p *FloorPKI) error {
	cfg := pki.ServerTLS(p.CA, p.Server)
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	fs := &FloorServer{}
	agentv1.RegisterAgentServiceServer(gs, fs)
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintf(w, "go_goroutines %d\ngo_memstats_heap_inuse_bytes %d\ngo_memstats_stack_inuse_bytes %d\nfloor_streams %d\nfloor_heartbeats_total %d\n",
			runtime.NumGoroutine(), ms.HeapInuse, ms.StackInuse, fs.streams.Load(), fs.heartbeats.Load())
		// The rest of the runtime's memory, under the names client_golang's
		// Go collector gives the controller's, for the harness's breakdown.
		for _, v := range []struct {
			name string
			n    uint64
		}{{"heap_sys", ms.HeapSys}, {"heap_idle", ms.HeapIdle}, {"heap_released", ms.HeapReleased}, {"stack_sys", ms.StackSys}, {"mspan_sys", ms.MSpanSys}, {"gc_sys", ms.GCSys}, {"other_sys", ms.OtherSys}, {"sys", ms.Sys}} {
			fmt.Fprintf(w, "go_memstats_%s_bytes %d\n", v.name, v.n)
		}
	})
	mux.HandleFunc("POST /fanout", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		res, err := fs.Fanout(ctx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(lis) }()
	go func() { errc <- hs.Serve(mlis) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		_ = hs.Close()
		return nil
	case err := <-errc:
		gs.Stop()
		_ = hs.Close()
		return err
	}
}

// FloorClientOptions configure a process of floor clients.
type FloorClientOptions struct {
	Server    string // host:port
	PKI       *FloorPKI
	Count     int
	Heartbeat time.Duration // default 10 s
	Logger    *slog.Logger
}

// RunFloorClients holds Count streams to the floor server, one connection
// each with its own certificate, sending a heartbeat at once and then every
// Heartbeat, until ctx ends. A broken stream is opened again with
// WaitForReady on the same ClientConn, so reconnects follow grpc-go's
// default connection backoff.
func RunFloorClients(ctx context.Context, o FloorClientOptions) error {
	if o.Heartbeat == 0 {
		o.Heartbeat = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	clients := make([]*grpc.ClientConn, 0, o.Count)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range o.Count {
		der, key, err := issue(o.PKI.CA, o.PKI.CAKey, fmt.Sprintf("floor-%05d", i), x509.ExtKeyUsageClientAuth, 1000+serial.Add(1))
		if err != nil {
			return err
		}
		cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		host, _, _ := net.SplitHostPort(o.Server)
		conn, err := grpc.NewClient(o.Server, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(o.PKI.CA, &cert, host))))
		if err != nil {
			return err
		}
		clients = append(clients, conn)
	}
	var wg sync.WaitGroup
	for _, conn := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			floorStream(ctx, conn, o.Heartbeat)
		}()
	}
	wg.Wait()
	return nil
}

// floorStream keeps one stream open with a heartbeat, as the agent's
// heartbeat module sends it, reopening it when it breaks.
func floorStream(ctx context.Context, conn *grpc.ClientConn, every time.Duration) {
	c := agentv1.NewAgentServiceClient(conn)
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := c.Connect(sctx, grpc.WaitForReady(true))
		if err != nil {
			cancel()
			continue
		}
		// The heartbeat loop and the answers to commands share the
		// stream's one sender.
		var sendMu sync.Mutex
		send := func(m *agentv1.ConnectRequest) error {
			sendMu.Lock()
			defer sendMu.Unlock()
			return stream.Send(m)
		}
		broken := make(chan struct{})
		go func() {
			defer close(broken)
			for {
				m, err := stream.Recv()
				if err != nil {
					return
				}
				if cmd := m.GetCommand(); cmd != nil {
					if err := send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_CommandResult{CommandResult: &agentv1.CommandResult{CommandId: cmd.GetId(), Success: true, Deliveries: 1}}}); err != nil {
						return
					}
				}
			}
		}()
		t := time.NewTicker(every)
		var seq uint64
	beats:
		for {
			seq++
			if err := send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: seq, SentAt: timestamppb.Now()}}}); err != nil {
				break
			}
			select {
			case <-broken:
				break beats
			case <-sctx.Done():
				break beats
			case <-t.C:
			}
		}
		t.Stop()
		cancel()
		<-broken
	}
}
