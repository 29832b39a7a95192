package vsphere

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// Config is the provider's config, the config block of its entry in the
// controller's providers file:
//
//	url: https://vcenter.dc1.example/sdk
//	username: svc-budfleet@vsphere.local
//	password_file: /etc/budfleet/vsphere-password
//	ca_file: /etc/budfleet/vcenter-ca.pem   # else the system roots; insecure: true skips the check
//	datacenter: DC1
//	template: /DC1/vm/templates/ubuntu-24.04-bud
//	resource_pool: /DC1/host/gpu-cluster/Resources/k8s   # default: the datacenter's only pool
//	datastore: vsanDatastore                             # default: the only datastore
//	folder: /DC1/vm/k8s-workers                          # default: the datacenter's VM folder
//	network: k8s-workers                                 # default: the template's
//	cpus: 8
//	memory_mb: 32768
//	disk_gb: 200
type Config struct {
	URL          string `json:"url"`
	Username     string `json:"username"`
	PasswordFile string `json:"password_file"`
	CAFile       string `json:"ca_file"`
	Insecure     bool   `json:"insecure"`
	Datacenter   string `json:"datacenter"`
	Template     string `json:"template"`
	ResourcePool string `json:"resource_pool"`
	Datastore    string `json:"datastore"`
	Folder       string `json:"folder"`
	Network      string `json:"network"`
	// The default machine spec; a machine's spec overrides each.
	CPUs     int `json:"cpus"`
	MemoryMB int `json:"memory_mb"`
	DiskGB   int `json:"disk_gb"`

	url *url.URL
}

// The defaults of the machine spec: the fleet guide's Kubernetes worker.
const (
	DefaultCPUs     = 8
	DefaultMemoryMB = 32768
	DefaultDiskGB   = 200
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", sdk.ErrInvalid, fmt.Sprintf(format, args...))
}

// parseConfig reads and checks raw; every error names the key to change.
func parseConfig(raw json.RawMessage) (Config, error) {
	cfg := Config{CPUs: DefaultCPUs, MemoryMB: DefaultMemoryMB, DiskGB: DefaultDiskGB}
	if err := sdk.DecodeStrict(raw, &cfg); err != nil {
		return Config{}, fmt.Errorf("%w (the vSphere provider takes url, username, password_file, ca_file, insecure, datacenter, template, resource_pool, datastore, folder, network, cpus, memory_mb, disk_gb)", err)
	}
	var missing []string
	for _, k := range []struct{ name, v string }{
		{"url", cfg.URL}, {"username", cfg.Username}, {"password_file", cfg.PasswordFile},
		{"datacenter", cfg.Datacenter}, {"template", cfg.Template},
	} {
		if k.v == "" {
			missing = append(missing, k.name)
		}
	}
	if len(missing) > 0 {
		return Config{}, invalid("the vSphere provider needs %s", strings.Join(missing, ", "))
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return Config{}, invalid("url %q: want https://VCENTER/sdk", cfg.URL)
	}
	if u.Scheme != "https" {
		return Config{}, invalid("url %q: vCenter is reached over https only", cfg.URL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/sdk"
	}
	u.User = nil
	cfg.url = u
	if _, err := cfg.password(); err != nil {
		return Config{}, err
	}
	if cfg.CAFile != "" {
		if cfg.Insecure {
			return Config{}, invalid("ca_file and insecure: true exclude each other: a CA is checked, or nothing is")
		}
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return Config{}, invalid("ca_file: %v", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return Config{}, invalid("ca_file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	if err := (Spec{CPUs: cfg.CPUs, MemoryMB: cfg.MemoryMB, DiskGB: cfg.DiskGB}).check(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// password reads password_file each time, so that a rotated password is
// used without restarting the controller.
func (c Config) password() (string, error) {
	b, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return "", invalid("password_file: %v", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", invalid("password_file %s is empty", c.PasswordFile)
	}
	return pw, nil
}

// Spec is a machine's spec (budctl machines create --spec FILE); each key
// overrides the provider config's default.
//
//	cpus: 16
//	memory_mb: 131072
//	disk_gb: 500
//	pci_passthrough:                 # whole GPUs (DirectPath I/O)
//	  - {id: "0000:3b:00.0", device_id: "0x20b5", vendor_id: "0x10de"}
//	vgpu_profile: grid_a100-40c      # or a vGPU (NVIDIA GRID) profile
type Spec struct {
	CPUs           int         `json:"cpus"`
	MemoryMB       int         `json:"memory_mb"`
	DiskGB         int         `json:"disk_gb"`
	PCIPassthrough []PCIDevice `json:"pci_passthrough"`
	VGPUProfile    string      `json:"vgpu_profile"`
}

// PCIDevice is a host PCI device handed to the VM whole. The ids are the
// host's (HostPciDevice: govc host.info -json, or esxcli hardware pci list).
type PCIDevice struct {
	ID       string `json:"id"`
	DeviceID string `json:"device_id"`
	VendorID string `json:"vendor_id"`
	SystemID string `json:"system_id"`
}

func (c Config) spec(raw json.RawMessage) (Spec, error) {
	s := Spec{CPUs: c.CPUs, MemoryMB: c.MemoryMB, DiskGB: c.DiskGB}
	if err := sdk.DecodeStrict(raw, &s); err != nil {
		return Spec{}, fmt.Errorf("machine spec: %w (it takes cpus, memory_mb, disk_gb, pci_passthrough, vgpu_profile)", err)
	}
	return s, s.check()
}

func (s Spec) check() error {
	switch {
	case s.CPUs < 1 || s.CPUs > 768:
		return invalid("cpus %d: want 1 to 768", s.CPUs)
	case s.MemoryMB < 128 || s.MemoryMB > 24<<20 || s.MemoryMB%4 != 0:
		return invalid("memory_mb %d: want a multiple of 4 from 128 to %d", s.MemoryMB, 24<<20)
	case s.DiskGB < 1 || s.DiskGB > 62<<10:
		return invalid("disk_gb %d: want 1 to %d", s.DiskGB, 62<<10)
	}
	for i, d := range s.PCIPassthrough {
		if d.ID == "" || d.DeviceID == "" || d.VendorID == "" {
			return invalid("pci_passthrough[%d]: id, device_id and vendor_id are required (the host's HostPciDevice)", i)
		}
		if _, err := vendorID(d.VendorID); err != nil {
			return invalid("pci_passthrough[%d]: %v", i, err)
		}
	}
	return nil
}

// vendorID reads a PCI vendor id such as 0x10de; vSphere keeps it as a
// signed 16-bit number.
func vendorID(s string) (int16, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 16)
	if err != nil {
		return 0, errors.New("vendor_id " + strconv.Quote(s) + " is not a 16-bit hex number such as 0x10de")
	}
	return int16(v), nil
}
