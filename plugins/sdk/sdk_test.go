package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// Every call crosses the real gRPC adapters and comes back as it went.
func TestRoundTrip(t *testing.T) {
	vm := sdk.Machine{
		ProviderID: "vm-42", Name: "worker-1", Addresses: []string{"10.0.1.20", "fd00::20"},
		Power: sdk.PowerOn, Labels: map[string]string{"budfleet.io/group.gpu_nodes": "true"},
	}
	var gotConfig json.RawMessage
	var gotSpec sdk.MachineSpec
	var gotBoot sdk.Bootstrap
	var gotAction sdk.PowerAction
	var deleted string
	p := sdk.TestProvider(t, &sdk.MockProvider{
		InfoF: func(context.Context) (sdk.Info, error) {
			return sdk.Info{Name: "mock", Version: "1.2.3"}, nil
		},
		ValidateConfigF: func(_ context.Context, c json.RawMessage) error { gotConfig = c; return nil },
		ListMachinesF: func(context.Context) ([]sdk.Machine, error) {
			return []sdk.Machine{vm, {ProviderID: "vm-43", Power: sdk.PowerOff}}, nil
		},
		CreateMachineF: func(_ context.Context, s sdk.MachineSpec, b sdk.Bootstrap) (sdk.Machine, error) {
			gotSpec, gotBoot = s, b
			return vm, nil
		},
		GetMachineF: func(_ context.Context, id string) (sdk.Machine, error) {
			return sdk.Machine{ProviderID: id, Power: sdk.PowerOther}, nil
		},
		DeleteMachineF: func(_ context.Context, id string) error { deleted = id; return nil },
		PowerF: func(_ context.Context, id string, a sdk.PowerAction) (sdk.Machine, error) {
			gotAction = a
			return sdk.Machine{ProviderID: id, Power: sdk.PowerOff}, nil
		},
	})
	ctx := t.Context()

	info, err := p.Info(ctx)
	if err != nil || info != (sdk.Info{Name: "mock", Version: "1.2.3"}) {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	if err := p.ValidateConfig(ctx, json.RawMessage(`{"url":"https://vc"}`)); err != nil {
		t.Fatal(err)
	}
	if string(gotConfig) != `{"url":"https://vc"}` {
		t.Fatalf("config = %s", gotConfig)
	}
	ms, err := p.ListMachines(ctx)
	if err != nil || len(ms) != 2 || !reflect.DeepEqual(ms[0], vm) || ms[1].Power != sdk.PowerOff {
		t.Fatalf("ListMachines = %+v, %v", ms, err)
	}
	spec := sdk.MachineSpec{Name: "worker", Options: json.RawMessage(`{"cpus":4}`), Labels: map[string]string{"pool": "a"}}
	boot := sdk.Bootstrap{ControllerAddress: "ctl:7443", CAPin: "abcd", JoinToken: "bud1.abcd.id.secret", AgentPackage: "https://pkg/bud-agent.deb"}
	m, err := p.CreateMachine(ctx, spec, boot)
	if err != nil || !reflect.DeepEqual(m, vm) {
		t.Fatalf("CreateMachine = %+v, %v", m, err)
	}
	if !reflect.DeepEqual(gotSpec, spec) || gotBoot != boot {
		t.Fatalf("the plugin got %+v, %+v", gotSpec, gotBoot)
	}
	if m, err := p.GetMachine(ctx, "vm-7"); err != nil || m.ProviderID != "vm-7" || m.Power != sdk.PowerOther {
		t.Fatalf("GetMachine = %+v, %v", m, err)
	}
	if err := p.DeleteMachine(ctx, "vm-8"); err != nil || deleted != "vm-8" {
		t.Fatalf("DeleteMachine: %v, deleted %q", err, deleted)
	}
	for _, a := range sdk.PowerActions {
		if _, err := p.Power(ctx, "vm-9", a); err != nil || gotAction != a {
			t.Fatalf("Power(%s): %v, the plugin got %q", a, err, gotAction)
		}
	}
}

// The sentinels keep their meaning across the wire, and the plugin's text
// reaches the host unchanged.
func TestErrorsCrossTheWire(t *testing.T) {
	p := sdk.TestProvider(t, &sdk.MockProvider{
		GetMachineF: func(_ context.Context, id string) (sdk.Machine, error) {
			return sdk.Machine{}, fmt.Errorf("%w: no VM %s in datacenter DC0", sdk.ErrNotFound, id)
		},
		ValidateConfigF: func(context.Context, json.RawMessage) error {
			return fmt.Errorf("%w: url is required: set it to the vCenter SDK address", sdk.ErrInvalid)
		},
		PowerF: func(context.Context, string, sdk.PowerAction) (sdk.Machine, error) {
			return sdk.Machine{}, fmt.Errorf("%w: vSphere VMs do not boot from PXE on request", sdk.ErrUnsupported)
		},
		DeleteMachineF: func(context.Context, string) error {
			return errors.New("vCenter: permission denied on folder /DC0/vm")
		},
	})
	ctx := t.Context()
	cases := []struct {
		err      error
		sentinel error
		text     string
	}{
		{get(p.GetMachine(ctx, "vm-1")), sdk.ErrNotFound, "machine not found: no VM vm-1 in datacenter DC0"},
		{p.ValidateConfig(ctx, nil), sdk.ErrInvalid, "invalid input: url is required: set it to the vCenter SDK address"},
		{get(p.Power(ctx, "vm-1", sdk.PowerActionPXE)), sdk.ErrUnsupported, "vSphere VMs do not boot from PXE"},
		{p.DeleteMachine(ctx, "vm-1"), nil, "vCenter: permission denied on folder /DC0/vm"},
		// Unset in the mock.
		{get(p.ListMachines(ctx)), sdk.ErrUnsupported, "MockProvider.ListMachinesF is not set"},
	}
	for _, c := range cases {
		if c.err == nil || !strings.Contains(c.err.Error(), c.text) {
			t.Errorf("error %v, want one saying %q", c.err, c.text)
			continue
		}
		for _, s := range []error{sdk.ErrNotFound, sdk.ErrInvalid, sdk.ErrUnsupported} {
			if errors.Is(c.err, s) != (s == c.sentinel) {
				t.Errorf("errors.Is(%q, %v) = %v", c.err, s, !(s == c.sentinel))
			}
		}
	}
}

func get[T any](_ T, err error) error { return err }

// The host's deadline reaches the plugin, and a plugin that overruns it
// gives the host context.DeadlineExceeded.
func TestDeadlinePassesThrough(t *testing.T) {
	p := sdk.TestProvider(t, &sdk.MockProvider{
		ListMachinesF: func(ctx context.Context) ([]sdk.Machine, error) {
			if _, ok := ctx.Deadline(); !ok {
				return nil, errors.New("the plugin saw no deadline")
			}
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.ListMachines(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the call took %v", d)
	}
}

// Bad specs and bootstraps stop in the SDK; the plugin never sees them.
func TestCreateChecksItsInput(t *testing.T) {
	called := false
	p := sdk.TestProvider(t, &sdk.MockProvider{
		CreateMachineF: func(context.Context, sdk.MachineSpec, sdk.Bootstrap) (sdk.Machine, error) {
			called = true
			return sdk.Machine{}, nil
		},
	})
	boot := sdk.Bootstrap{ControllerAddress: "ctl:7443", JoinToken: "bud1.x.y.z"}
	for _, c := range []struct {
		spec sdk.MachineSpec
		boot sdk.Bootstrap
		want string
	}{
		{sdk.MachineSpec{}, boot, "no name"},
		{sdk.MachineSpec{Name: "w"}, sdk.Bootstrap{JoinToken: "t"}, "no controller address"},
		{sdk.MachineSpec{Name: "w"}, sdk.Bootstrap{ControllerAddress: "ctl:7443"}, "no join token"},
	} {
		_, err := p.CreateMachine(t.Context(), c.spec, c.boot)
		if !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CreateMachine(%+v, %+v) = %v, want %q", c.spec, c.boot, err, c.want)
		}
	}
	if called {
		t.Fatal("the plugin was called with bad input")
	}
	if _, err := p.Power(t.Context(), "vm-1", "hibernate"); !errors.Is(err, sdk.ErrInvalid) {
		t.Fatalf("Power(hibernate) = %v", err)
	}
}

func TestDecodeStrict(t *testing.T) {
	type conf struct {
		URL  string `json:"url"`
		CPUs int    `json:"cpus"`
	}
	c := conf{CPUs: 8}
	if err := sdk.DecodeStrict(nil, &c); err != nil || c.CPUs != 8 {
		t.Fatalf("empty: %+v, %v", c, err)
	}
	if err := sdk.DecodeStrict(json.RawMessage(`{"url":"https://vc","cpus":4}`), &c); err != nil || c != (conf{"https://vc", 4}) {
		t.Fatalf("good: %+v, %v", c, err)
	}
	err := sdk.DecodeStrict(json.RawMessage(`{"cpu":4}`), &c)
	if !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), `unknown field "cpu"`) {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestParsePowerAction(t *testing.T) {
	if a, err := sdk.ParsePowerAction("pxe"); err != nil || a != sdk.PowerActionPXE {
		t.Fatalf("pxe: %q, %v", a, err)
	}
	_, err := sdk.ParsePowerAction("cycle")
	if !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), "use one of on, off, reset, pxe") {
		t.Fatalf("cycle: %v", err)
	}
}
