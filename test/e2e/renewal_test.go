package e2e

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/state"
)

// TestCertificateRenewal: with one-minute node certificates the agent renews
// over its session after two thirds of the lifetime (about 35s in, the
// certificates being backdated by 15s); the renewed certificate is what the
// agent stores and uses once the first one has expired.
func TestCertificateRenewal(t *testing.T) {
	t.Parallel()
	c := startController(t, withServeArgs("--agent-cert-ttl", "1m"))
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "node-renewing")
	first := c.mustGetNode(t, a.nodeID)
	serial0, expiry0 := first.GetCertificateSerial(), first.GetCertificateExpiresAt().AsTime()
	if serial0 == "" {
		t.Fatal("node has no certificate serial")
	}
	if d := time.Until(expiry0); d > time.Minute+5*time.Second || d < 30*time.Second {
		t.Fatalf("first certificate expires in %s; want about a minute", d)
	}
	a.start(t)
	a.waitReady(t)

	var renewed string
	eventually(t, 50*time.Second, func() error {
		if err := a.readyErr(); err != nil {
			return err
		}
		n, err := c.getNode(a.nodeID)
		if err != nil {
			return err
		}
		if n.GetCertificateSerial() == serial0 {
			return fmt.Errorf("certificate serial still %s", serial0)
		}
		if !n.GetCertificateExpiresAt().AsTime().After(expiry0) {
			return fmt.Errorf("renewed certificate expires %v, not after the first (%v)", n.GetCertificateExpiresAt().AsTime(), expiry0)
		}
		renewed = n.GetCertificateSerial()
		return nil
	})
	eventually(t, 5*time.Second, func() error {
		if !strings.Contains(a.log(), "node certificate renewed") {
			return fmt.Errorf("agent log has no 'node certificate renewed'")
		}
		return nil
	})
	if !strings.Contains(readLog(c.logPath), "node certificate renewed") {
		t.Error("controller log has no 'node certificate renewed'")
	}
	if m := c.metrics(t); len(metricSamples(m, "bud_controller_certificate_renewals_total")) != 1 || strings.Contains(m, "bud_controller_certificate_renewals_total 0\n") {
		t.Errorf("renewals metric: %v", metricSamples(m, "bud_controller_certificate_renewals_total"))
	}
	// Renewal happens over the live session: no reconnect was needed.
	if n := strings.Count(a.log(), "connected to controller"); n != 1 {
		t.Errorf("%d sessions in the agent log, want 1", n)
	}

	// The agent stored the renewed certificate.
	a.stop(t)
	db, err := state.Open(a.stateDir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id, err := db.Identity()
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(id.CertDER)
	if err != nil {
		t.Fatal(err)
	}
	// The controller may have renewed once more just before the stop.
	if got := cert.SerialNumber.Text(16); got != renewed {
		if n := c.mustGetNode(t, a.nodeID); got != n.GetCertificateSerial() {
			t.Fatalf("agent stored certificate %s; the controller issued %s", got, n.GetCertificateSerial())
		}
	}
	if got := cert.SerialNumber.Text(16); got == serial0 {
		t.Fatal("agent still stores the first certificate")
	}

	// Once the first certificate has expired, only the renewed one can open
	// a session.
	time.Sleep(time.Until(expiry0.Add(time.Second)))
	a.start(t)
	a.waitReady(t)
	if n := strings.Count(a.log(), "connected to controller"); n != 2 {
		t.Errorf("%d sessions in the agent log, want 2", n)
	}
}
