// Package inventory collects the host facts an agent reports: hostname,
// machine id, boot id, OS and kernel, CPU, memory and addresses.
package inventory

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	"github.com/bud-ecosystem/budfleet/version"
	"google.golang.org/protobuf/proto"
)

// Fingerprint identifies a snapshot's content, to send only on change.
func Fingerprint(h *hostv1.Inventory) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(h)
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%x", sum[:8])
}

// Collector reads host facts from a root file system, "/" in production and
// a fixture tree in tests.
type Collector struct {
	Root string
	// Hostname overrides the detected hostname (several simulated agents on
	// one machine).
	Hostname string
	// Interfaces lists addresses; nil means the host's.
	Interfaces func() ([]net.Addr, error)
	// BootIDFile, when set, is read for the boot id instead of
	// proc/sys/kernel/random/boot_id under Root: for tests and simulations
	// that stand in for a reboot by restarting the agent with a new one.
	BootIDFile string
}

func (c *Collector) root() string {
	if c.Root == "" {
		return "/"
	}
	return c.Root
}

// BootID returns the kernel's boot id, a new one every boot; empty when it
// cannot be read.
func (c *Collector) BootID() string {
	p := c.BootIDFile
	if p == "" {
		p = filepath.Join(c.root(), "proc/sys/kernel/random/boot_id")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Collect takes a snapshot. Facts that cannot be read are left empty rather
// than failing the whole snapshot.
func (c *Collector) Collect(ctx context.Context) (*hostv1.Inventory, error) {
	root := c.root()
	h := &hostv1.Inventory{Architecture: runtime.GOARCH, AgentVersion: version.Version}
	if err := ctx.Err(); err != nil {
		return h, err
	}
	h.Hostname = c.Hostname
	if h.Hostname == "" {
		h.Hostname, _ = os.Hostname()
	}
	h.MachineId = MachineID(root)
	h.BootId = c.BootID()
	h.Os = osName(root)
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	h.CpuModel, h.CpuCores = cpuInfo(root)
	if h.CpuCores == 0 {
		h.CpuCores = uint32(runtime.NumCPU())
	}
	h.MemoryBytes = memTotal(root)
	ifaces := c.Interfaces
	if ifaces == nil {
		ifaces = net.InterfaceAddrs
	}
	if addrs, err := ifaces(); err == nil {
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
				continue
			}
			h.IpAddresses = append(h.IpAddresses, ipn.IP.String())
		}
		sort.Strings(h.IpAddresses)
	}
	return h, nil
}

// MachineID reads /etc/machine-id under root.
func MachineID(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "etc/machine-id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func osName(root string) string {
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				if s, err := strconv.Unquote(v); err == nil {
					return s
				}
				return strings.Trim(v, `"'`)
			}
		}
	}
	return ""
}

func cpuInfo(root string) (model string, cores uint32) {
	b, err := os.ReadFile(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		return "", 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "processor":
			cores++
		case "model name":
			if model == "" {
				model = strings.TrimSpace(v)
			}
		}
	}
	return model, cores
}

func memTotal(root string) uint64 {
	b, err := os.ReadFile(filepath.Join(root, "proc/meminfo"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				return 0
			}
			kb, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}
