package syslog

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/rsyslogtest"
	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
)

// sink is an in-process TLS syslog receiver for unit tests.
type sink struct {
	t      *testing.T
	ln     net.Listener
	fx     rsyslogtest.Fixtures
	handle func(c *tls.Conn)

	mu   sync.Mutex
	msgs [][]byte
}

func newSink(t *testing.T, handle func(s *sink, c *tls.Conn)) *sink {
	t.Helper()
	fx, err := rsyslogtest.WriteFixtures(t.TempDir(), true)
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
	s := &sink{t: t, ln: ln, fx: fx}
	if handle == nil {
		handle = (*sink).readAll
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(s, c.(*tls.Conn))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return s
}

// readAll reads frames until EOF and then closes, like rsyslog.
func (s *sink) readAll(c *tls.Conn) {
	r := bufio.NewReader(c)
	for {
		m, err := ParseFrame(r)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
	}
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *sink) client(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	tc, err := output.TLSConfig{CAFile: s.fx.CAFile, CertFile: s.fx.ClientCertFile, KeyFile: s.fx.ClientKeyFile}.Load()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: s.ln.Addr().String(), TLS: tc, Format: Formatter{Hostname: "h"}, Settle: 20 * time.Millisecond}
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
		out[i] = siem.Event{Tag: "audit", Raw: []byte("event " + strconv.Itoa(i)), Fields: siem.FieldsOf(map[string]string{"serial": strconv.Itoa(i)})}
	}
	return out
}

func TestClientSendsFramesAndClosesOrderly(t *testing.T) {
	s := newSink(t, nil)
	c := s.client(t, nil)
	for i := 0; i < 3; i++ {
		if err := c.Send(context.Background(), batch(1000)); err != nil {
			t.Fatal(err)
		}
	}
	// Close waits for the receiver to close after reading everything.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := s.count(); n != 3000 {
		t.Fatalf("receiver has %d messages right after Close, want 3000", n)
	}
	m, err := Parse(s.msgs[2999])
	if err != nil || string(m.Msg) != "event 999" || m.MsgID != "audit" || m.Hostname != "h" {
		t.Fatalf("%+v %v", m, err)
	}
	if err := c.Send(context.Background(), batch(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}

func TestClientConfirmEachBatch(t *testing.T) {
	s := newSink(t, nil)
	c := s.client(t, func(c *Config) { c.ConfirmEachBatch = true })
	for i := 1; i <= 3; i++ {
		if err := c.Send(context.Background(), batch(500)); err != nil {
			t.Fatal(err)
		}
		if n := s.count(); n != i*500 {
			t.Fatalf("after confirmed batch %d the receiver has %d", i, n)
		}
	}
}

// The receiver closes idle connections: the next Send reconnects instead
// of writing into the dead one.
func TestClientReconnectsAfterPeerClose(t *testing.T) {
	var conns sync.WaitGroup
	conns.Add(1)
	first := true
	var mu sync.Mutex
	s := newSink(t, func(s *sink, c *tls.Conn) {
		mu.Lock()
		f := first
		first = false
		mu.Unlock()
		if f {
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			s.readAll(c)
			conns.Done()
			return
		}
		s.readAll(c)
	})
	c := s.client(t, nil)
	if err := c.Send(context.Background(), batch(10)); err != nil {
		t.Fatal(err)
	}
	conns.Wait()
	time.Sleep(50 * time.Millisecond)
	if err := c.Send(context.Background(), batch(10)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := s.count(); n != 20 {
		t.Fatalf("%d messages, want 20", n)
	}
}

// A receiver that accepts the handshake and then closes (rsyslog's way of
// refusing a certificate) fails Send without writing anything.
func TestClientRejectedAfterHandshake(t *testing.T) {
	s := newSink(t, func(s *sink, c *tls.Conn) {
		c.Handshake()
	})
	c := s.client(t, func(c *Config) { c.Settle = 500 * time.Millisecond })
	err := c.Send(context.Background(), batch(10))
	var he *output.HandshakeError
	if !errors.As(err, &he) || !he.AfterHandshake {
		t.Fatalf("err %v, want a HandshakeError after the handshake", err)
	}
	if d := output.DescribeTLSError(err); !strings.Contains(d, "rejected our client certificate") {
		t.Fatalf("described as %q", d)
	}
}

// A receiver that stops reading: ctx ends the Send, and WriteTimeout does
// when ctx has no deadline.
func TestClientBlockedWrite(t *testing.T) {
	block := make(chan struct{})
	s := newSink(t, func(s *sink, c *tls.Conn) {
		c.Handshake()
		<-block
	})
	defer close(block)
	big := batch(1)
	big[0].Raw = []byte(strings.Repeat("x", 8<<20))

	c := s.client(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Send(ctx, big)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}

	c2 := s.client(t, func(c *Config) { c.WriteTimeout = 300 * time.Millisecond })
	start = time.Now()
	err = c2.Send(context.Background(), big)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

func TestNewValidates(t *testing.T) {
	tc := &tls.Config{}
	for _, cfg := range []Config{
		{TLS: tc},
		{Addr: "nohostport", TLS: tc},
		{Addr: "h:1"},
		{Addr: "h:1", TLS: tc, Format: Formatter{SDID: "bad id"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}
