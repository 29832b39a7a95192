package controller

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

func TestAddrLimiter(t *testing.T) {
	clock := &fakeClock{t: base}
	l := newAddrLimiter(1, 3, clock.Now)
	for i := 0; i < 3; i++ {
		if !l.allow("192.0.2.1:1000") {
			t.Fatalf("call %d within the burst refused", i)
		}
	}
	if l.allow("192.0.2.1:2000") {
		t.Fatal("a fourth call from the same address (another port) allowed")
	}
	if !l.allow("192.0.2.2:1000") {
		t.Fatal("another address shares the bucket")
	}
	clock.Advance(time.Second)
	if !l.allow("192.0.2.1:1000") || l.allow("192.0.2.1:1000") {
		t.Fatal("the bucket does not refill at 1/s")
	}
}

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The listener's Accept, in its own goroutine, reports refusals.
	var mu sync.Mutex
	var refusedList []string
	refused := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(refusedList) }
	l := newLimitListener(inner, 10, 2, func(addr, reason string) { mu.Lock(); refusedList = append(refusedList, reason); mu.Unlock() })
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	a1, a2 := <-accepted, <-accepted
	// The third is closed by the listener: its read ends.
	clients[2].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := clients[2].Read(make([]byte, 1)); err == nil {
		t.Fatal("the third connection from one address was kept")
	}
	// The listener reports the refusal just after closing the connection.
	for deadline := time.Now().Add(5 * time.Second); len(refused()) == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if r := refused(); len(r) != 1 || !strings.Contains(r[0], "from this address") {
		t.Fatalf("refused %v", r)
	}
	if open, src := l.counts("127.0.0.1"); open != 2 || src != 2 {
		t.Fatalf("counts %d %d", open, src)
	}
	a1.Close()
	a1.Close() // twice counts once
	if open, _ := l.counts("127.0.0.1"); open != 1 {
		t.Fatalf("after a close: %d open", open)
	}
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a3 := <-accepted
	a2.Close()
	a3.Close()
	for _, c := range clients {
		c.Close()
	}
}

func TestCheckNodeText(t *testing.T) {
	for _, bad := range []string{"x\x1b[2J", "line\r\nNode ID: forged", "tab\there", "bell\a", "\xff\xfe", "rtl\u202eoverride"} {
		if err := checkNodeText(&hostv1.Inventory{Os: bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if err := checkNodeText(&gpuv1.GpuInventory{Gpus: []*gpuv1.Gpu{{Product: bad}}}); err == nil {
			t.Errorf("GPU product %q accepted", bad)
		}
		if err := checkNodeText(&hostv1.Inventory{IpAddresses: []string{bad}}); err == nil {
			t.Errorf("address %q accepted", bad)
		}
	}
	inv := &hostv1.Inventory{Os: "Ubuntu 24.04 — ü", Kernel: strings.Repeat("k", 10000)}
	if err := checkNodeText(inv); err != nil {
		t.Fatal(err)
	}
	if len(inv.Kernel) != MaxNodeString || inv.Os != "Ubuntu 24.04 — ü" {
		t.Fatalf("kernel %d bytes, os %q", len(inv.Kernel), inv.Os)
	}
	g := &gpuv1.GpuInventory{DriverVersion: strings.Repeat("é", 1000)}
	for i := 0; i < 500; i++ {
		g.Gpus = append(g.Gpus, &gpuv1.Gpu{Uuid: strings.Repeat("u", 900)})
	}
	if err := checkNodeText(g); err != nil {
		t.Fatal(err)
	}
	if len(g.Gpus) != MaxNodeList || len(g.Gpus[0].Uuid) != MaxNodeString || len(g.DriverVersion) > MaxNodeString || !strings.HasSuffix(g.DriverVersion, "é") {
		t.Fatalf("gpus %d, uuid %d, driver %d", len(g.Gpus), len(g.Gpus[0].Uuid), len(g.DriverVersion))
	}
}
