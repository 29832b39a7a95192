package bmc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/baremetaltest"
)

// TestIPMIAgainstIPMISim drives OpenIPMI's ipmi_sim over lanplus: power
// status, on, off, reset and a one-time PXE boot, each checked in the
// simulator's chassis state and cross-checked with ipmitool.
func TestIPMIAgainstIPMISim(t *testing.T) {
	sim := baremetaltest.StartBMC(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := NewIPMI(Endpoint{Address: sim.Address, Port: sim.Port, Username: sim.Username, Password: sim.Password}, IPMIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	on, err := b.PowerOn(ctx)
	if err != nil || on {
		t.Fatalf("PowerOn = %v, %v; want off", on, err)
	}
	if err := b.SetPower(ctx, On); err != nil {
		t.Fatal(err)
	}
	if on, err := b.PowerOn(ctx); err != nil || !on || sim.Power() != "on" {
		t.Fatalf("after on: PowerOn = %v, %v; simulator %s", on, err, sim.Power())
	}
	if out, err := sim.Ipmitool("chassis", "power", "status"); err != nil || !strings.Contains(out, "Chassis Power is on") {
		t.Errorf("ipmitool sees %q, %v", out, err)
	}
	if err := b.BootPXE(ctx); err != nil {
		t.Fatal(err)
	}
	if d := sim.BootDevice(); d != "pxe" {
		t.Errorf("boot device %q, want pxe", d)
	}
	if err := b.SetPower(ctx, Reset); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sim.ChassisLog(), "set reset 1") {
		t.Errorf("no reset in the chassis log:\n%s", sim.ChassisLog())
	}
	if err := b.SetPower(ctx, Off); err != nil {
		t.Fatal(err)
	}
	if on, err := b.PowerOn(ctx); err != nil || on || sim.Power() != "off" {
		t.Fatalf("after off: PowerOn = %v, %v; simulator %s", on, err, sim.Power())
	}
	if err := b.SetPower(ctx, "cycle"); err == nil {
		t.Error("SetPower(cycle) succeeded")
	}
}

func TestIPMIErrors(t *testing.T) {
	sim := baremetaltest.StartBMC(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fast := IPMIOptions{Timeout: 300 * time.Millisecond, Retries: 1, Attempts: 2, Backoff: 50 * time.Millisecond}

	wrong, _ := NewIPMI(Endpoint{Address: sim.Address, Port: sim.Port, Username: sim.Username, Password: "wrong"}, fast)
	_, err := wrong.PowerOn(ctx)
	if !errors.Is(err, ErrAuth) || errors.Is(err, ErrUnreachable) {
		t.Errorf("wrong password: %v, want ErrAuth", err)
	}
	if err != nil && strings.Contains(err.Error(), sim.Password) {
		t.Errorf("the error shows the password: %v", err)
	}

	// Nothing listens on the port: the BMC is not answering, which is not
	// "power off".
	sim.Stop()
	gone, _ := NewIPMI(Endpoint{Address: sim.Address, Port: sim.Port, Username: sim.Username, Password: sim.Password}, fast)
	start := time.Now()
	on, err := gone.PowerOn(ctx)
	if !errors.Is(err, ErrUnreachable) || on {
		t.Errorf("stopped BMC: %v, %v; want ErrUnreachable", on, err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("giving up took %v", d)
	}

	for _, ep := range []Endpoint{{Username: "a"}, {Address: "x"}, {Address: "x", Username: strings.Repeat("u", 17)}} {
		if _, err := NewIPMI(ep, fast); err == nil {
			t.Errorf("NewIPMI(%+v) succeeded", ep)
		}
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "ipmi.yml")
	if err := os.WriteFile(f, []byte("defaults: {username: ADMIN, password: dflt}\nhosts:\n  gpu-01: {address: 10.0.2.30, port: 6230, password: s3cret}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCredentials(f)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Endpoint("gpu-01", Endpoint{Address: "10.9.9.9", Username: "fromvars"}), (Endpoint{Address: "10.0.2.30", Port: 6230, Username: "fromvars", Password: "s3cret"}); got != want {
		t.Errorf("gpu-01 = %+v, want %+v", got, want)
	}
	if got, want := c.Endpoint("w1", Endpoint{Address: "10.9.9.9"}), (Endpoint{Address: "10.9.9.9", Username: "ADMIN", Password: "dflt"}); got != want {
		t.Errorf("w1 = %+v, want %+v", got, want)
	}
	if err := os.WriteFile(f, []byte("hosts:\n  a: {adress: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(f); err == nil || !strings.Contains(err.Error(), "adress") {
		t.Errorf("unknown key: %v", err)
	}
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(f); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable: %v", err)
	}
}
