package freeport

import (
	"net"
	"os"
	"strconv"
	"testing"
)

func TestRange(t *testing.T) {
	for _, tc := range []struct {
		in     string
		lo, hi int
	}{
		{"32768\t60999\n", 21768, 32767},
		{"40000 65000", 29000, 39999},
		{"1024 65535", 0, 0},
		{"", 20000, 32000},
		{"junk", 20000, 32000},
	} {
		if lo, hi := Range(tc.in); lo != tc.lo || hi != tc.hi {
			t.Errorf("Range(%q) = %d, %d; want %d, %d", tc.in, lo, hi, tc.lo, tc.hi)
		}
	}
}

// Ports come from below the kernel's ephemeral range, are never handed out
// twice, and can be listened on.
func TestPick(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := Range(string(b))
	seen := map[int]bool{}
	for range 300 {
		p := T(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if lo > 0 && (p < lo || p > hi) {
			t.Fatalf("port %d outside %d-%d", p, lo, hi)
		}
	}
	for p := range seen {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
		break
	}
}
