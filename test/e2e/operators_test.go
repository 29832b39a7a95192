package e2e

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/pki"
)

// TestOperatorRoles, with the real binaries: an admin issues a viewer and a
// siem-admin (keys made by budctl), the viewer reads but may not mint
// tokens or push SIEM configs, the siem-admin may push but not queue
// commands, a renewed viewer keeps its key, and a revoked operator is
// refused on its next call.
func TestOperatorRoles(t *testing.T) {
	t.Parallel()
	c := startController(t)
	dir := t.TempDir()
	viewerCfg := filepath.Join(dir, "vera.yaml")
	out := c.mustBudctl(t, "operators", "issue", "vera", "--role", "viewer", "--ttl", "30d", "-o", viewerCfg)
	if !strings.Contains(out, "operator vera (viewer) issued") {
		t.Fatalf("issue printed %q", out)
	}
	if fi, err := os.Stat(viewerCfg); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("viewer config: %v %v", fi, err)
	}
	siemCfg := filepath.Join(dir, "sid.yaml")
	c.mustBudctl(t, "operators", "issue", "sid", "--role", "siem-admin", "-o", siemCfg)
	if _, stderr, err := c.budctl("operators", "issue", "sid", "--role", "siem-admin", "-o", siemCfg); err == nil || !strings.Contains(stderr, "exists") {
		t.Fatalf("issue over an existing file: %v %s", err, stderr)
	}
	if _, stderr, err := c.budctl("operators", "issue", "x", "--role", "root", "-o", filepath.Join(dir, "x.yaml")); err == nil || !strings.Contains(stderr, "siem-admin") {
		t.Fatalf("issue with a bad role: %v %s", err, stderr)
	}

	// The viewer reads, and nothing more.
	if _, stderr, err := runBudctl(viewerCfg, "nodes", "list"); err != nil {
		t.Fatalf("viewer nodes list: %v %s", err, stderr)
	}
	if _, stderr, err := runBudctl(viewerCfg, "tokens", "create"); err == nil || !strings.Contains(stderr, "PermissionDenied") || !strings.Contains(stderr, `"viewer"`) {
		t.Fatalf("viewer tokens create: %v %s", err, stderr)
	}
	cfg := filepath.Join(dir, "siem.yaml")
	if err := os.WriteFile(cfg, []byte("siem:\n  sources:\n    - {path: /var/log/audit/audit.log, tag: audit}\n  outputs:\n    - {name: x, type: relp, address: 127.0.0.1:1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := runBudctl(viewerCfg, "siem", "apply", "-f", cfg); err == nil || !strings.Contains(stderr, "PermissionDenied") {
		t.Fatalf("viewer siem apply: %v %s", err, stderr)
	}
	if _, stderr, err := runBudctl(viewerCfg, "operators", "list"); err == nil || !strings.Contains(stderr, "PermissionDenied") {
		t.Fatalf("viewer operators list: %v %s", err, stderr)
	}
	// The siem-admin pushes SIEM configs but runs no commands.
	if _, stderr, err := runBudctl(siemCfg, "siem", "apply", "-f", cfg); err != nil {
		t.Fatalf("siem-admin siem apply: %v %s", err, stderr)
	}
	if _, stderr, err := runBudctl(siemCfg, "tokens", "create"); err == nil || !strings.Contains(stderr, "PermissionDenied") {
		t.Fatalf("siem-admin tokens create: %v %s", err, stderr)
	}

	// Renewal keeps the key and the role.
	before := loadAdminConfig(t, viewerCfg)
	if out, stderr, err := runBudctl(viewerCfg, "operators", "renew"); err != nil || !strings.Contains(out, "renewed") {
		t.Fatalf("viewer renew: %v %s %s", err, out, stderr)
	}
	after := loadAdminConfig(t, viewerCfg)
	if after.Key != before.Key || after.Certificate == before.Certificate {
		t.Fatal("renew changed the key or kept the certificate")
	}
	cert, err := pki.DecodeCert([]byte(after.Certificate))
	if err != nil || cert.Subject.OrganizationalUnit[0] != pki.RoleViewer || cert.Subject.CommonName != "vera" {
		t.Fatalf("renewed certificate %v %v", cert.Subject, err)
	}

	list := c.mustBudctl(t, "operators", "list")
	for _, w := range []string{"admin", "vera", "sid", "viewer", "siem-admin"} {
		if !strings.Contains(list, w) {
			t.Errorf("operators list lacks %q:\n%s", w, list)
		}
	}

	// Revoked: refused on the next call, with the new certificate too.
	c.mustBudctl(t, "operators", "revoke", "vera")
	if _, stderr, err := runBudctl(viewerCfg, "nodes", "list"); err == nil || !strings.Contains(stderr, "revoked") {
		t.Fatalf("revoked viewer nodes list: %v %s", err, stderr)
	}
	// The init admin is an operator record too: a second admin can revoke it.
	adminCfg := filepath.Join(dir, "ada.yaml")
	c.mustBudctl(t, "operators", "issue", "ada", "--role", "admin", "--ttl", "1h", "-o", adminCfg)
	if _, stderr, err := runBudctl(adminCfg, "operators", "revoke", "admin"); err != nil {
		t.Fatalf("revoke the init admin: %v %s", err, stderr)
	}
	if _, stderr, err := c.budctl("nodes", "list"); err == nil || !strings.Contains(stderr, "revoked") {
		t.Fatalf("revoked init admin: %v %s", err, stderr)
	}
}

// TestRotateServerCert: `bud-controller rotate-server-cert` on a running
// controller's data dir changes the certificate it serves within seconds,
// and budctl (which pins the CA) keeps working.
func TestRotateServerCert(t *testing.T) {
	t.Parallel()
	c := startController(t)
	serial := func() string {
		b, err := os.ReadFile(filepath.Join(c.dataDir, "server.crt"))
		if err != nil {
			t.Fatal(err)
		}
		cert, err := pki.DecodeCert(b)
		if err != nil {
			t.Fatal(err)
		}
		return cert.SerialNumber.Text(16)
	}
	old := serial()
	stdout, stderr, err := runCmd(30*time.Second, filepath.Join(binDir, "bud-controller"), "rotate-server-cert", "--data-dir", c.dataDir)
	if err != nil || !strings.Contains(stdout, "rotated") {
		t.Fatalf("rotate-server-cert: %v %s %s", err, stdout, stderr)
	}
	if serial() == old {
		t.Fatal("the file still holds the old certificate")
	}
	eventually(t, 10*time.Second, func() error {
		got, err := servedSerial(c.addr(), c.caOnlyTLS())
		if err != nil {
			return err
		}
		if got == old {
			return fmt.Errorf("still serving %s", old)
		}
		return nil
	})
	c.mustBudctl(t, "nodes", "list")
}

// servedSerial is the serial of the certificate the server at addr presents.
func servedSerial(addr string, conf *tls.Config) (string, error) {
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}
