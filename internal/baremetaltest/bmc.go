package baremetaltest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BMC is an OpenIPMI ipmi_sim answering IPMI v2.0 lanplus on 127.0.0.1.
// Its chassis_control script keeps the power state and the boot device in
// files, so a test reads what the provider did (Power, BootDevice) without
// going through IPMI.
type BMC struct {
	Address  string // 127.0.0.1
	Port     int
	Username string
	Password string
	Dir      string

	cmd  *exec.Cmd
	done chan struct{}
}

// StartBMC starts an ipmi_sim with user admin (and a random password),
// power off. t.Cleanup stops it.
func StartBMC(t testing.TB) *BMC {
	t.Helper()
	Ensure(t)
	b := &BMC{Address: "127.0.0.1", Username: "admin", Password: fmt.Sprintf("pw%d", time.Now().UnixNano()%1e6), Dir: t.TempDir()}
	port, err := freeUDPPort()
	if err != nil {
		t.Fatalf("baremetaltest: %v", err)
	}
	b.Port = port
	// ipmi_sim calls the script as `SCRIPT get PARM...` (prints parm:value
	// lines) and `SCRIPT set PARM VALUE...`.
	script := filepath.Join(b.Dir, "chassis_control.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`#!/bin/sh
d=%s
echo "$*" >> "$d/chassis.log"
op=$1; shift
case $op in
set) while [ $# -ge 2 ]; do echo "$2" > "$d/state.$1"; shift 2; done ;;
get) for p in "$@"; do v=$(cat "$d/state.$p" 2>/dev/null || echo 0); echo "$p:$v"; done ;;
esac
`, b.Dir)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, "state.power"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lan := filepath.Join(b.Dir, "lan.conf")
	if err := os.WriteFile(lan, []byte(fmt.Sprintf(`# written by internal/baremetaltest
name "bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%s"
  user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, b.Port, script, b.Username, b.Password)), 0o644); err != nil {
		t.Fatal(err)
	}
	emu := filepath.Join(b.Dir, "emu.cmd")
	if err := os.WriteFile(emu, []byte("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(b.Dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(b.Dir, "ipmi_sim.log"))
	if err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command("ipmi_sim", "-c", lan, "-f", emu, "-n", "-s", state)
	b.cmd.Stdout, b.cmd.Stderr = out, out
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("baremetaltest: start ipmi_sim: %v", err)
	}
	b.done = make(chan struct{})
	go func() { b.cmd.Wait(); out.Close(); close(b.done) }()
	t.Cleanup(b.Stop)
	// Ready when ipmitool gets an answer.
	deadline := time.Now().Add(20 * time.Second)
	for {
		o, err := exec.Command("ipmitool", "-I", "lanplus", "-H", b.Address, "-p", strconv.Itoa(b.Port),
			"-U", b.Username, "-P", b.Password, "-C", "3", "-N", "1", "-R", "1", "chassis", "power", "status").CombinedOutput()
		if err == nil {
			break
		}
		select {
		case <-b.done:
			t.Fatalf("baremetaltest: ipmi_sim exited: %s\n%s", b.cmd.ProcessState, readFile(filepath.Join(b.Dir, "ipmi_sim.log")))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("baremetaltest: ipmi_sim on %d does not answer: %v: %s", b.Port, err, o)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return b
}

// Stop stops ipmi_sim.
func (b *BMC) Stop() {
	if b.cmd == nil {
		return
	}
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	}
	b.cmd = nil
}

// Power is "on" or "off" as the simulated chassis has it.
func (b *BMC) Power() string {
	if strings.TrimSpace(readFile(filepath.Join(b.Dir, "state.power"))) == "1" {
		return "on"
	}
	return "off"
}

// BootDevice is the boot device last set ("" when none was).
func (b *BMC) BootDevice() string {
	v, err := os.ReadFile(filepath.Join(b.Dir, "state.boot"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(v))
}

// ChassisLog is every call of the chassis_control script.
func (b *BMC) ChassisLog() string { return readFile(filepath.Join(b.Dir, "chassis.log")) }

// Ipmitool runs ipmitool against the BMC, to cross-check the provider
// with another client.
func (b *BMC) Ipmitool(args ...string) (string, error) {
	base := []string{"-I", "lanplus", "-H", b.Address, "-p", strconv.Itoa(b.Port), "-U", b.Username, "-P", b.Password, "-C", "3"}
	out, err := exec.Command("ipmitool", append(base, args...)...).CombinedOutput()
	return string(out), err
}

// freeUDPPort picks a free UDP port on loopback below the ephemeral range.
func freeUDPPort() (int, error) {
	for range 200 {
		p := 20000 + int(time.Now().UnixNano()%12000)
		c, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		c.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free UDP port")
}
