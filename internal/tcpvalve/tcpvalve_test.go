package tcpvalve_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/tcpvalve"
)

// echoServer echoes what it reads until the test ends or it is closed.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln
}

func TestValveHoldsAfterBudgetAndOpens(t *testing.T) {
	ln := echoServer(t)
	v := tcpvalve.Start(t, ln.Addr().String())
	c, err := net.Dial("tcp", v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	held := v.HoldAfter(10)
	if _, err := c.Write([]byte("0123456789abcdef")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("valve never held")
	}
	got := make([]byte, 16)
	if _, err := io.ReadFull(c, got[:10]); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(got[10:]); err == nil {
		t.Fatalf("read %q past the hold", got[10:10+n])
	}
	c.SetReadDeadline(time.Time{})
	v.Open()
	if _, err := io.ReadFull(c, got[10:]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte("0123456789abcdef")) {
		t.Fatalf("got %q", got)
	}
}

func TestValvePeerCloseCutsHeldClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	v := tcpvalve.Start(t, ln.Addr().String())
	c, err := net.Dial("tcp", v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-v.HoldAfter(0)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := peer.Read(make([]byte, 4)); err == nil {
		t.Fatalf("peer read %d bytes through a held valve", n)
	}
	peer.Close() // the peer stops while the client's bytes are held
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read on a link the peer closed: %v, want it closed", err)
	}
}

func TestValveRefusedPeerClosesClient(t *testing.T) {
	ln := echoServer(t)
	addr := ln.Addr().String()
	ln.Close()
	v := tcpvalve.Start(t, addr)
	c, err := net.Dial("tcp", v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read although the peer is down: %v, want the connection closed", err)
	}
}
