package inventory

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

const cpuinfo = `processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
cpu MHz		: 2000.000

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz

processor	: 2
model name	: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz

processor	: 3
model name	: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
`

const meminfo = `MemTotal:       16314312 kB
MemFree:         1234567 kB
MemAvailable:    8765432 kB
`

const osRelease = `NAME="Ubuntu"
VERSION_ID="24.04"
PRETTY_NAME="Ubuntu 24.04.1 LTS"
ID=ubuntu
`

func writeFile(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fixtureRoot builds a root file system with the files the collector reads.
func fixtureRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	writeFile(t, root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
	writeFile(t, root, "etc/os-release", osRelease)
	writeFile(t, root, "proc/cpuinfo", cpuinfo)
	writeFile(t, root, "proc/meminfo", meminfo)
	return root
}

func ipnet(s string) net.Addr {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func fakeInterfaces() ([]net.Addr, error) {
	return []net.Addr{
		ipnet("192.168.1.10/24"),
		ipnet("127.0.0.1/8"),
		ipnet("fe80::1c2b:3dff:fe4e:5f60/64"),
		ipnet("2001:db8::42/64"),
		ipnet("::1/128"),
		ipnet("169.254.10.20/16"),
		ipnet("10.0.0.5/8"),
		&net.IPAddr{IP: net.ParseIP("203.0.113.9")}, // not an *net.IPNet: skipped
	}, nil
}

func kernelRelease(t *testing.T) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

func TestCollectFixture(t *testing.T) {
	c := &Collector{Root: fixtureRoot(t), Hostname: "node-a", Interfaces: fakeInterfaces}
	h, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := &hostv1.Inventory{
		Hostname:     "node-a",
		MachineId:    "0123456789abcdef0123456789abcdef",
		Os:           "Ubuntu 24.04.1 LTS",
		Kernel:       kernelRelease(t),
		Architecture: runtime.GOARCH,
		CpuModel:     "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
		CpuCores:     4,
		MemoryBytes:  16314312 * 1024,
		IpAddresses:  []string{"10.0.0.5", "192.168.1.10", "2001:db8::42"},
		AgentVersion: version.Version,
	}
	if !proto.Equal(h, want) {
		t.Fatalf("Collect =\n%+v\nwant\n%+v", h, want)
	}
}

func TestCollectMissingFiles(t *testing.T) {
	c := &Collector{Root: t.TempDir(), Hostname: "node-a", Interfaces: func() ([]net.Addr, error) { return nil, nil }}
	h, err := c.Collect(context.Background())
	if err != nil {
		t.Fatalf("Collect on an empty root: %v", err)
	}
	if h.MachineId != "" || h.Os != "" || h.CpuModel != "" || h.MemoryBytes != 0 || len(h.IpAddresses) != 0 {
		t.Errorf("facts from missing files should be empty: %+v", h)
	}
	// Without /proc/cpuinfo the core count falls back to the Go runtime's.
	if h.CpuCores != uint32(runtime.NumCPU()) {
		t.Errorf("CPUCores = %d, want runtime.NumCPU() = %d", h.CpuCores, runtime.NumCPU())
	}
	if h.Hostname != "node-a" || h.Architecture != runtime.GOARCH || h.AgentVersion != version.Version {
		t.Errorf("facts not from files missing: %+v", h)
	}
}

func TestCollectInterfacesError(t *testing.T) {
	c := &Collector{Root: fixtureRoot(t), Hostname: "n", Interfaces: func() ([]net.Addr, error) {
		return nil, errors.New("netlink unavailable")
	}}
	h, err := c.Collect(context.Background())
	if err != nil {
		t.Fatalf("an address listing error should not fail the snapshot: %v", err)
	}
	if h.IpAddresses != nil {
		t.Errorf("IPAddresses = %v, want none", h.IpAddresses)
	}
	if h.MachineId == "" {
		t.Error("other facts lost")
	}
}

func TestCollectCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := &Collector{Root: fixtureRoot(t), Interfaces: fakeInterfaces}
	if _, err := c.Collect(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Collect with a canceled context: %v", err)
	}
}

func TestCollectDefaultHostname(t *testing.T) {
	want, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	h, err := (&Collector{Root: t.TempDir(), Interfaces: fakeInterfaces}).Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Hostname != want {
		t.Errorf("Hostname = %q, want os.Hostname() %q", h.Hostname, want)
	}
}

func TestOSName(t *testing.T) {
	for _, tc := range []struct {
		name, rel, content, want string
	}{
		{"double quoted", "etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n", "Debian GNU/Linux 12 (bookworm)"},
		{"single quoted", "etc/os-release", "PRETTY_NAME='Fedora Linux 40'\n", "Fedora Linux 40"},
		{"unquoted", "etc/os-release", "ID=alpine\nPRETTY_NAME=Alpine\n", "Alpine"},
		{"usr/lib fallback", "usr/lib/os-release", "PRETTY_NAME=\"Arch Linux\"\n", "Arch Linux"},
		{"no pretty name", "etc/os-release", "NAME=\"X\"\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeFile(t, root, tc.rel, tc.content)
			if got := osName(root); got != tc.want {
				t.Errorf("osName = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMachineIDTrimmed(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "etc/machine-id", "  abc123\n\n")
	if got := MachineID(root); got != "abc123" {
		t.Errorf("MachineID = %q", got)
	}
	if got := MachineID(t.TempDir()); got != "" {
		t.Errorf("MachineID without the file = %q", got)
	}
}

func TestFingerprint(t *testing.T) {
	c := &Collector{Root: fixtureRoot(t), Hostname: "node-a", Interfaces: fakeInterfaces}
	h1, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h2, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(h1) != Fingerprint(h2) {
		t.Fatalf("fingerprint of two snapshots of an unchanged host differ: %s %s", Fingerprint(h1), Fingerprint(h2))
	}
	if fp := Fingerprint(h1); len(fp) != 16 {
		t.Errorf("fingerprint %q is not 16 hex digits", fp)
	}

	for name, mutate := range map[string]func(*hostv1.Inventory){
		"hostname":      func(h *hostv1.Inventory) { h.Hostname = "node-b" },
		"machine id":    func(h *hostv1.Inventory) { h.MachineId = "ffff" },
		"os":            func(h *hostv1.Inventory) { h.Os = "Ubuntu 26.04 LTS" },
		"kernel":        func(h *hostv1.Inventory) { h.Kernel += "-1" },
		"architecture":  func(h *hostv1.Inventory) { h.Architecture = "riscv64" },
		"cpu model":     func(h *hostv1.Inventory) { h.CpuModel = "AMD EPYC" },
		"cpu cores":     func(h *hostv1.Inventory) { h.CpuCores++ },
		"memory":        func(h *hostv1.Inventory) { h.MemoryBytes += 4096 },
		"ip added":      func(h *hostv1.Inventory) { h.IpAddresses = append(append([]string(nil), h.IpAddresses...), "10.9.9.9") },
		"ip changed":    func(h *hostv1.Inventory) { h.IpAddresses = []string{"10.0.0.6", "192.168.1.10", "2001:db8::42"} },
		"agent version": func(h *hostv1.Inventory) { h.AgentVersion = "v9.9.9" },
	} {
		h := proto.Clone(h1).(*hostv1.Inventory)
		mutate(h)
		if Fingerprint(h) == Fingerprint(h1) {
			t.Errorf("fingerprint unchanged after a %s change", name)
		}
		if Fingerprint(h1) != Fingerprint(h2) {
			t.Fatalf("mutating a copy changed the original (%s)", name)
		}
	}

	// A change on disk shows in the next snapshot's fingerprint.
	writeFile(t, c.Root, "etc/machine-id", "fedcba9876543210fedcba9876543210\n")
	h3, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(h3) == Fingerprint(h1) {
		t.Error("fingerprint unchanged after machine-id changed on disk")
	}
}

// The boot id is read under the root like the other facts, or from
// BootIDFile when a test or simulation stands in for a reboot; a new one
// is a new fingerprint.
func TestCollectBootID(t *testing.T) {
	root := fixtureRoot(t)
	writeFile(t, root, "proc/sys/kernel/random/boot_id", "8d3e1c9a-5f0b-4a61-9c2e-6b7d0f4e2a11\n")
	c := &Collector{Root: root, Hostname: "node-a", Interfaces: fakeInterfaces}
	h, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.BootId != "8d3e1c9a-5f0b-4a61-9c2e-6b7d0f4e2a11" || c.BootID() != h.BootId {
		t.Errorf("boot id %q (BootID %q)", h.BootId, c.BootID())
	}

	override := filepath.Join(t.TempDir(), "boot_id")
	writeFile(t, filepath.Dir(override), "boot_id", "0f0e0d0c-0b0a-4909-8807-060504030201\n")
	c.BootIDFile = override
	h2, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h2.BootId != "0f0e0d0c-0b0a-4909-8807-060504030201" {
		t.Errorf("boot id with BootIDFile = %q", h2.BootId)
	}
	if Fingerprint(h2) == Fingerprint(h) {
		t.Error("fingerprint unchanged after a new boot id")
	}
	c.BootIDFile = filepath.Join(t.TempDir(), "missing")
	if got := c.BootID(); got != "" {
		t.Errorf("boot id from a missing file = %q", got)
	}
	// This host's own, when it has one: a UUID.
	if id := (&Collector{}).BootID(); id != "" && len(id) != 36 {
		t.Errorf("this host's boot id %q is not a UUID", id)
	}
}
