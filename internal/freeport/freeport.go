// Package freeport hands out loopback ports for the test harnesses (the
// e2e suite, rsyslog, etcd, the Kubernetes control plane): one helper, so
// they all pick from the same place and never from each other's ports.
//
// Ports come from below the kernel's ephemeral range (read from
// /proc/sys/net/ipv4/ip_local_port_range, not assumed), so that the many
// outgoing connections of agents, budctl and the peers never take a port
// between the pick and the listener's bind, or while a daemon restarts on
// it. A port is handed out once per process, so listeners started in
// parallel do not collide with each other; the starting point is random, so
// test processes running side by side rarely try the same ports.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var state struct {
	sync.Mutex
	init    bool
	lo, hi  int // the range to pick from; lo == 0: let the kernel pick
	next    int
	handed  map[int]bool
	readErr error
}

// Range is where ports are picked from given the kernel's ephemeral range
// file contents: the 11,000 ports just below its start, or none (0, 0)
// when there is no room below it.
func Range(ipLocalPortRange string) (lo, hi int) {
	lo, hi = 20000, 32000
	f := strings.Fields(ipLocalPortRange)
	if len(f) != 2 {
		return lo, hi
	}
	start, err := strconv.Atoi(f[0])
	if err != nil {
		return lo, hi
	}
	if start <= 12000 {
		return 0, 0
	}
	return start - 11000, start - 1
}

// Pick returns a loopback port nothing listened on a moment ago and that
// this process has not handed out before.
func Pick() (int, error) {
	state.Lock()
	defer state.Unlock()
	if !state.init {
		state.init = true
		state.handed = map[int]bool{}
		b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
		state.lo, state.hi = Range(string(b))
		if state.lo > 0 {
			state.next = state.lo + rand.IntN(state.hi-state.lo+1)
		}
	}
	for range 2000 {
		p := 0
		if state.lo > 0 {
			p = state.next
			state.next++
			if state.next > state.hi {
				state.next = state.lo
			}
			if state.handed[p] {
				continue
			}
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if state.handed[port] {
			continue
		}
		state.handed[port] = true
		return port, nil
	}
	if state.lo > 0 {
		return 0, fmt.Errorf("freeport: no free loopback port between %d and %d", state.lo, state.hi)
	}
	return 0, errors.New("freeport: no free loopback port")
}

// T is Pick for a test: it fails the test when no port is free.
func T(t testing.TB) int {
	t.Helper()
	p, err := Pick()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
