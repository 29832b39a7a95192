// Package tcpvalve relays a test's TCP connections to a real peer and can
// stop passing the client's bytes at a chosen point.
//
// A fault test that stops a peer "while a batch is in flight" races the
// client when the batch is fast: against rsyslog on a quick machine 50,000
// RELP messages were all acknowledged before the test could stop it. With
// the valve held after a given number of bytes, the rest of the batch waits
// in the relay while the test stops the peer, so the fault always lands
// mid-batch. The peer's bytes always pass; when the peer closes, the
// client's connection is closed too, as a real link would report it.
package tcpvalve

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Valve listens on Addr and relays each connection to the target address.
type Valve struct {
	// Addr is where clients connect instead of the target.
	Addr string

	target string
	ln     net.Listener

	mu     sync.Mutex
	cond   *sync.Cond
	budget int64 // bytes the clients may still send; < 0: no limit
	held   chan struct{}
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// Start relays connections on a loopback port to target until the test
// ends.
func Start(t testing.TB, target string) *Valve {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tcpvalve: %v", err)
	}
	v := &Valve{Addr: ln.Addr().String(), target: target, ln: ln, budget: -1, conns: map[net.Conn]struct{}{}}
	v.cond = sync.NewCond(&v.mu)
	v.wg.Add(1)
	go v.accept()
	t.Cleanup(v.Close)
	return v
}

// HoldAfter lets the clients send n more bytes in all, then holds the rest
// until Open. The channel is closed once the valve holds.
func (v *Valve) HoldAfter(n int64) <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.budget = n
	v.held = make(chan struct{})
	if n == 0 {
		close(v.held)
	}
	v.cond.Broadcast()
	return v.held
}

// Open passes everything again.
func (v *Valve) Open() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.budget = -1
	v.cond.Broadcast()
}

// Close stops listening, cuts every relayed connection and waits for the
// relay's goroutines.
func (v *Valve) Close() {
	v.mu.Lock()
	v.closed = true
	v.ln.Close()
	for c := range v.conns {
		c.Close()
	}
	v.cond.Broadcast()
	v.mu.Unlock()
	v.wg.Wait()
}

func (v *Valve) accept() {
	defer v.wg.Done()
	for {
		c, err := v.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", v.target)
		if err != nil {
			// The peer is down: the client sees its connection refused
			// as a closed connection, which is what it must cope with.
			c.Close()
			continue
		}
		v.mu.Lock()
		if v.closed {
			v.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		v.conns[c], v.conns[up] = struct{}{}, struct{}{}
		v.mu.Unlock()
		l := &link{v: v, client: c, up: up}
		v.wg.Add(2)
		go l.toPeer()
		go l.toClient()
	}
}

type link struct {
	v          *Valve
	client, up net.Conn
	once       sync.Once
	done       bool // under v.mu
}

// cut closes both ends once; a holding toPeer wakes up and returns.
func (l *link) cut() {
	l.once.Do(func() {
		l.client.Close()
		l.up.Close()
		v := l.v
		v.mu.Lock()
		l.done = true
		delete(v.conns, l.client)
		delete(v.conns, l.up)
		v.cond.Broadcast()
		v.mu.Unlock()
	})
}

// take waits until the client may send, charges up to max bytes to the
// budget and returns how many; 0 when the link is cut.
func (l *link) take(max int) int {
	v := l.v
	v.mu.Lock()
	defer v.mu.Unlock()
	for {
		if l.done || v.closed {
			return 0
		}
		if v.budget < 0 {
			return max
		}
		if v.budget > 0 {
			n := int(min(int64(max), v.budget))
			v.budget -= int64(n)
			if v.budget == 0 {
				close(v.held)
			}
			return n
		}
		v.cond.Wait()
	}
}

func (l *link) toPeer() {
	defer l.v.wg.Done()
	defer l.cut()
	buf := make([]byte, 32<<10)
	for {
		r, err := l.client.Read(buf)
		// The valve decides when bytes are forwarded, not when they are
		// read, so a hold armed while a read was waiting applies to it.
		for p := buf[:r]; len(p) > 0; {
			n := l.take(len(p))
			if n == 0 {
				return
			}
			if _, werr := l.up.Write(p[:n]); werr != nil {
				return
			}
			p = p[n:]
		}
		if err != nil {
			return
		}
	}
}

func (l *link) toClient() {
	defer l.v.wg.Done()
	defer l.cut()
	io.Copy(l.client, l.up)
}
