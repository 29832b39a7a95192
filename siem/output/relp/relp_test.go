package relp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
	"github.com/bud-ecosystem/budfleet/siem/output/syslog"
)

// fakeServer is an in-process RELP server over TLS. answer decides the
// rsp data for the n-th syslog message of a connection ("" sends none).
type fakeServer struct {
	ln  net.Listener
	fx  rsyslogtest.Fixtures
	cfg struct {
		answer   func(conn, n int, f Frame) string
		ackDelay time.Duration // answer in bursts after this delay
		stall    chan struct{} // stop reading after open until closed
		hold     chan struct{} // withhold every rsp until closed
		// rspTxnr, when set, picks the txnr of the n-th message's rsp.
		rspTxnr func(conn, n, txnr int) int
	}

	mu          sync.Mutex
	conns       int
	received    []string
	maxInFlight int
}

func newFake(t *testing.T, configure ...func(*fakeServer)) *fakeServer {
	t.Helper()
	fx, err := rsyslogtest.WriteFixtures(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(fx.ServerCertFile, fx.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(fx.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{ln: ln, fx: fx}
	s.cfg.answer = func(int, int, Frame) string { return "200 OK" }
	for _, f := range configure {
		f(s)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			id := s.conns
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s.serve(id, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return s
}

func (s *fakeServer) serve(id int, c net.Conn) {
	r := bufio.NewReader(c)
	var wmu sync.Mutex
	w := bufio.NewWriter(c)
	send := func(f Frame) {
		wmu.Lock()
		defer wmu.Unlock()
		w.Write(AppendFrame(nil, f))
		w.Flush()
	}
	var pending []Frame // answers not sent yet (ackDelay)
	var pmu sync.Mutex
	done := make(chan struct{})
	defer close(done)
	if s.cfg.ackDelay > 0 {
		go func() {
			for {
				select {
				case <-done:
					return
				case <-time.After(s.cfg.ackDelay):
				}
				pmu.Lock()
				p := pending
				pending = nil
				pmu.Unlock()
				for _, f := range p {
					send(f)
				}
			}
		}()
	}
	held := s.cfg.hold != nil
	if held {
		go func() {
			select {
			case <-done:
				return
			case <-s.cfg.hold:
			}
			pmu.Lock()
			defer pmu.Unlock()
			for _, f := range pending {
				send(f)
			}
			pending, held = nil, false
		}()
	}
	n := 0
	for {
		f, err := ReadFrameLimit(r, 1<<20)
		if err != nil {
			return
		}
		switch f.Command {
		case "open":
			send(Frame{Txnr: f.Txnr, Command: "rsp", Data: []byte("200 OK\nrelp_version=0\nrelp_software=fake\ncommands=syslog")})
			if s.cfg.stall != nil {
				<-s.cfg.stall
				return
			}
		case "close":
			send(Frame{Txnr: f.Txnr, Command: "rsp", Data: []byte("200 OK")})
			send(Frame{Command: "serverclose"})
			return
		case "syslog":
			s.mu.Lock()
			s.received = append(s.received, string(f.Data))
			s.mu.Unlock()
			a := s.cfg.answer(id, n, f)
			n++
			if a == "serverclose" {
				send(Frame{Command: "serverclose"})
				return
			}
			if a == "" {
				continue
			}
			rsp := Frame{Txnr: f.Txnr, Command: "rsp", Data: []byte(a)}
			if s.cfg.rspTxnr != nil {
				rsp.Txnr = s.cfg.rspTxnr(id, n-1, f.Txnr)
			}
			pmu.Lock()
			if held {
				pending = append(pending, rsp)
				pmu.Unlock()
				continue
			}
			pmu.Unlock()
			if s.cfg.ackDelay > 0 {
				pmu.Lock()
				pending = append(pending, rsp)
				s.mu.Lock()
				if len(pending) > s.maxInFlight {
					s.maxInFlight = len(pending)
				}
				s.mu.Unlock()
				pmu.Unlock()
				continue
			}
			send(rsp)
		}
	}
}

func (s *fakeServer) client(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	tc, err := output.TLSConfig{CAFile: s.fx.CAFile, CertFile: s.fx.ClientCertFile, KeyFile: s.fx.ClientKeyFile}.Load()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: s.ln.Addr().String(), TLS: tc, Format: syslog.Formatter{Hostname: "h"}}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func batch(n int) []siem.Event {
	out := make([]siem.Event, n)
	for i := range out {
		out[i] = siem.Event{Tag: "audit", Raw: []byte("event " + strconv.Itoa(i))}
	}
	return out
}

func TestSendAllAcked(t *testing.T) {
	s := newFake(t)
	c := s.client(t, nil)
	for i := 0; i < 3; i++ {
		if err := c.Send(context.Background(), batch(5000)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.received) != 15000 || s.conns != 1 {
		t.Fatalf("%d messages over %d connections", len(s.received), s.conns)
	}
	m, err := syslog.Parse([]byte(s.received[14999]))
	if err != nil || string(m.Msg) != "event 4999" {
		t.Fatalf("%+v %v", m, err)
	}
}

func TestWindowIsRespected(t *testing.T) {
	s := newFake(t, func(s *fakeServer) { s.cfg.ackDelay = 20 * time.Millisecond })
	c := s.client(t, func(c *Config) { c.Window = 7 })
	if err := c.Send(context.Background(), batch(100)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.maxInFlight > 7 || s.maxInFlight == 0 {
		t.Fatalf("max in flight %d, window 7", s.maxInFlight)
	}
}

func TestRefusedMessageFailsBatchThenResend(t *testing.T) {
	s := newFake(t, func(s *fakeServer) {
		s.cfg.answer = func(conn, n int, f Frame) string {
			if conn == 1 && n == 50 {
				return "500 cannot take it"
			}
			return "200 OK"
		}
	})
	c := s.client(t, nil)
	err := c.Send(context.Background(), batch(100))
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("err %v", err)
	}
	if err := c.Send(context.Background(), batch(100)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns != 2 {
		t.Fatalf("%d connections, want a new one after the failure", s.conns)
	}
}

func TestServerCloseMidBatch(t *testing.T) {
	s := newFake(t, func(s *fakeServer) {
		s.cfg.answer = func(conn, n int, f Frame) string {
			if conn == 1 && n == 10 {
				return "serverclose"
			}
			return "200 OK"
		}
	})
	c := s.client(t, nil)
	err := c.Send(context.Background(), batch(100))
	if !errors.Is(err, ErrServerClose) {
		t.Fatalf("err %v", err)
	}
	t.Log(err)
	if err := c.Send(context.Background(), batch(100)); err != nil {
		t.Fatal(err)
	}
}

func TestAckTimeoutAndContext(t *testing.T) {
	s := newFake(t, func(s *fakeServer) {
		s.cfg.answer = func(conn, n int, f Frame) string {
			if n == 3 {
				return "" // never answered
			}
			return "200 OK"
		}
	})
	c := s.client(t, func(c *Config) { c.AckTimeout = 200 * time.Millisecond })
	start := time.Now()
	err := c.Send(context.Background(), batch(10))
	if !errors.Is(err, ErrAckTimeout) || time.Since(start) > 3*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	c2 := s.client(t, nil)
	err = c2.Send(ctx, batch(10))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
}

func TestUnexpectedTxnr(t *testing.T) {
	s := newFake(t, func(s *fakeServer) {
		s.cfg.rspTxnr = func(conn, n, txnr int) int {
			if n == 1 {
				return 1 // open's, answered already
			}
			return txnr
		}
	})
	c := s.client(t, nil)
	if err := c.Send(context.Background(), batch(1)); err != nil {
		t.Fatal(err)
	}
	// An rsp for a txnr that is not in flight is a protocol error.
	err := c.Send(context.Background(), batch(1))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("err %v", err)
	}
}

func TestTxnrWraps(t *testing.T) {
	s := newFake(t)
	c := s.client(t, nil)
	if err := c.Send(context.Background(), batch(1)); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.txnr = MaxTxnr - 5
	c.mu.Unlock()
	if err := c.Send(context.Background(), batch(20)); err != nil {
		t.Fatal(err)
	}
	if c.txnr != 15 { // 5 up to MaxTxnr, then 1..15
		t.Fatalf("txnr %d after wrapping", c.txnr)
	}
}

func TestOpenRefused(t *testing.T) {
	fx, err := rsyslogtest.WriteFixtures(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.LoadX509KeyPair(fx.ServerCertFile, fx.ServerKeyFile)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answers := []string{"500 go away", "200 OK\nrelp_version=0\ncommands=foo"}
	go func() {
		for _, a := range answers {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			f, err := ReadFrame(r)
			if err == nil {
				c.Write(AppendFrame(nil, Frame{Txnr: f.Txnr, Command: "rsp", Data: []byte(a)}))
			}
			c.Close()
		}
	}()
	tc, _ := output.TLSConfig{CAFile: fx.CAFile}.Load()
	c, err := New(Config{Addr: ln.Addr().String(), TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(context.Background(), batch(1)); !errors.Is(err, ErrRefused) {
		t.Fatalf("err %v", err)
	}
	if err := c.Send(context.Background(), batch(1)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("err %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	tc := &tls.Config{}
	for _, cfg := range []Config{{TLS: tc}, {Addr: "x", TLS: tc}, {Addr: "h:1"}, {Addr: "h:1", TLS: tc, Format: syslog.Formatter{SDID: "a b"}}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

// A server that stops reading: the blocked write fails after AckTimeout.
func TestStalledServer(t *testing.T) {
	release := make(chan struct{})
	s := newFake(t, func(s *fakeServer) { s.cfg.stall = release })
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup
	c := s.client(t, func(c *Config) { c.AckTimeout = 300 * time.Millisecond })
	b := batch(1)
	b[0].Raw = make([]byte, 32<<20)
	start := time.Now()
	err := c.Send(context.Background(), b)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(start) > 10*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

// Start returns once a batch is written: with every rsp withheld the
// server sees several batches, and they resolve in order once answered.
func TestStartKeepsSeveralBatchesInFlight(t *testing.T) {
	hold := make(chan struct{})
	s := newFake(t, func(s *fakeServer) { s.cfg.hold = hold })
	c := s.client(t, func(c *Config) { c.Window = 100 })
	var ps []output.Pending
	for range 3 {
		p, err := c.Start(context.Background(), batch(10))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for { // poll interval below: the server reads concurrently
		s.mu.Lock()
		n := len(s.received)
		s.mu.Unlock()
		if n == 30 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, p := range ps {
		select {
		case <-p.Done():
			t.Fatalf("batch %d resolved before any rsp", i)
		default:
		}
	}
	close(hold)
	for i, p := range ps {
		<-p.Done()
		if p.Err() != nil {
			t.Fatalf("batch %d: %v", i, p.Err())
		}
	}
}

// A batch whose own messages are all answered stays unresolved while an
// earlier one waits for an rsp, and both fail when that never comes.
func TestBatchResolvesAfterEarlierOnes(t *testing.T) {
	s := newFake(t, func(s *fakeServer) {
		s.cfg.answer = func(conn, n int, f Frame) string {
			if n == 3 {
				return "" // never answered
			}
			return "200 OK"
		}
	})
	c := s.client(t, func(c *Config) { c.AckTimeout = 300 * time.Millisecond })
	p1, err := c.Start(context.Background(), batch(5))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := c.Start(context.Background(), batch(5))
	if err != nil {
		t.Fatal(err)
	}
	<-p2.Done()
	select {
	case <-p1.Done():
	default:
		t.Fatal("a later batch resolved before an earlier one")
	}
	if !errors.Is(p1.Err(), ErrAckTimeout) || !errors.Is(p2.Err(), ErrAckTimeout) {
		t.Fatalf("errors %v / %v, want ack timeouts", p1.Err(), p2.Err())
	}
}

// A negative rsp fails its batch and every later one (in flight, or
// started before the caller saw the failure: Start fails then); earlier
// ones stay acknowledged, and the next Send uses a new session.
func TestRefusalFailsLaterBatchesInFlight(t *testing.T) {
	s := newFake(t, func(s *fakeServer) {
		s.cfg.answer = func(conn, n int, f Frame) string {
			if conn == 1 && n == 15 {
				return "500 cannot take it"
			}
			return "200 OK"
		}
	})
	c := s.client(t, nil)
	var ps []output.Pending
	var startErr error
	for range 3 {
		p, err := c.Start(context.Background(), batch(10))
		if err != nil {
			startErr = err
			break
		}
		ps = append(ps, p)
	}
	var errs []error
	for _, p := range ps {
		<-p.Done()
		errs = append(errs, p.Err())
	}
	if startErr != nil {
		errs = append(errs, startErr)
	}
	if len(errs) != 3 || errs[0] != nil {
		t.Fatalf("errors %v, want the first batch acknowledged and two failures", errs)
	}
	for _, err := range errs[1:] {
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("errors %v, want refusals after the first", errs)
		}
	}
	if err := c.Send(context.Background(), batch(10)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns != 2 {
		t.Fatalf("%d connections, want a new one after the refusal", s.conns)
	}
}
