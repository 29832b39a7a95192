package gpu

import (
	"context"
	"strings"
	"testing"
	"time"
)

func u64(v uint64) *uint64 { return &v }
func bl(v bool) *bool      { return &v }

func TestEvaluate(t *testing.T) {
	at := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	xids := func(codes ...uint64) []XID {
		var out []XID
		for i, c := range codes {
			out = append(out, XID{Code: c, At: at.Add(time.Duration(i) * time.Second)})
		}
		return out
	}
	cases := []struct {
		name   string
		h      Health
		o      Options
		want   State
		reason string // substring of the first reason
	}{
		{"clean", Health{ECCVolatileDouble: u64(0), ECCAggregateSingle: u64(0)}, Options{}, Healthy, ""},
		{"nothing supported", Health{}, Options{}, Healthy, ""},
		{"ignored XIDs", Health{XIDs: xids(13, 31, 43, 45, 68, 109)}, Options{}, Healthy, ""},
		{"XID 79", Health{XIDs: xids(13, 79)}, Options{}, Unhealthy, "XID 79 (GPU has fallen off the bus)"},
		{"XID twice", Health{XIDs: xids(48, 48)}, Options{}, Unhealthy, "XID 48 (double-bit ECC error) x2, last at 2025-06-01T12:00:01Z"},
		{"unknown XID", Health{XIDs: xids(154)}, Options{}, Unhealthy, "XID 154, last"},
		{"nothing ignored", Health{XIDs: xids(13)}, Options{IgnoredXIDs: map[uint64]bool{}}, Unhealthy, "XID 13"},
		{"own ignore list", Health{XIDs: xids(79)}, Options{IgnoredXIDs: map[uint64]bool{79: true}}, Healthy, ""},
		{"volatile DBE", Health{ECCVolatileDouble: u64(1)}, Options{}, Unhealthy, "1 uncorrected"},
		{"volatile DBE under own threshold", Health{ECCVolatileDouble: u64(2)}, Options{VolatileDoubleBitUnhealthy: 2}, Healthy, ""},
		{"volatile DBE over own threshold", Health{ECCVolatileDouble: u64(3)}, Options{VolatileDoubleBitUnhealthy: 2}, Unhealthy, "3 uncorrected"},
		{"aggregate DBE alone", Health{ECCAggregateDouble: u64(4)}, Options{}, Healthy, ""},
		{"aggregate SBE under", Health{ECCAggregateSingle: u64(999)}, Options{}, Healthy, ""},
		{"aggregate SBE at default", Health{ECCAggregateSingle: u64(1000)}, Options{}, Degraded, "1000 corrected"},
		{"aggregate SBE own threshold", Health{ECCAggregateSingle: u64(10)}, Options{AggregateSingleBitDegraded: 10}, Degraded, "threshold 10"},
		{"volatile SBE", Health{ECCVolatileSingle: u64(5000)}, Options{}, Healthy, ""},
		{"remap failed", Health{RemappingFailed: bl(true), RemappedRowsPending: bl(false)}, Options{}, Unhealthy, "row remapping failed"},
		{"remap pending", Health{RemappingFailed: bl(false), RemappedRowsPending: bl(true)}, Options{}, Degraded, "reset needed"},
		{"retired pages pending", Health{RetiredPagesPending: bl(true)}, Options{}, Degraded, "page retirement pending"},
		{"power cap is normal", Health{ThrottleReasons: []string{ThrottleGpuIdle, ThrottleSwPowerCap, ThrottleSyncBoost}}, Options{}, Healthy, ""},
		{"hw slowdown", Health{ThrottleReasons: []string{ThrottleHwSlowdown}}, Options{}, Degraded, "HwSlowdown"},
		{"thermal", Health{ThrottleReasons: []string{ThrottleSwThermalSlowdown}}, Options{}, Degraded, "thermal"},
		{"power brake", Health{ThrottleReasons: []string{ThrottleHwPowerBrakeSlowdown}}, Options{}, Degraded, "power brake"},
		{"worst first", Health{ThrottleReasons: []string{ThrottleHwSlowdown}, ECCVolatileDouble: u64(1)}, Options{}, Unhealthy, "uncorrected"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, reasons := Evaluate(c.h, c.o)
			if st != c.want {
				t.Fatalf("%s %v, want %s", st, reasons, c.want)
			}
			if c.reason == "" {
				if len(reasons) != 0 {
					t.Fatalf("reasons %v", reasons)
				}
				return
			}
			if len(reasons) == 0 || !strings.Contains(reasons[0], c.reason) {
				t.Fatalf("reasons %v, want %q first", reasons, c.reason)
			}
		})
	}
	// Evaluate is pure: the verdict of a judged sample does not change.
	h := Health{ECCVolatileDouble: u64(1), XIDs: xids(79)}
	h.State, h.Reasons = Evaluate(h, Options{})
	st, r := Evaluate(h, Options{})
	if st != h.State || len(r) != len(h.Reasons) {
		t.Errorf("not idempotent: %v vs %v", r, h.Reasons)
	}
}

func TestThrottleNames(t *testing.T) {
	if got := throttleNames(0x1 | 0x8 | 0x40 | 0x800); strings.Join(got, ",") != "GpuIdle,HwSlowdown,HwThermalSlowdown,Unknown(0x800)" {
		t.Errorf("%v", got)
	}
	if throttleNames(0) != nil {
		t.Error("0 has names")
	}
	if m, err := throttleMask([]string{"HwSlowdown", "SwPowerCap"}); err != nil || m != 0xc {
		t.Errorf("%x %v", m, err)
	}
	if _, err := throttleMask([]string{"Nope"}); err == nil {
		t.Error("unknown name accepted")
	}
}

func TestOpenNoneAndBogus(t *testing.T) {
	s, err := Open(BackendNone, Options{})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := s.Inventory(context.Background())
	if err != nil || inv.Available || inv.Reason != ReasonDisabled {
		t.Fatalf("%+v %v", inv, err)
	}
	if hs, err := s.Health(context.Background()); err != nil || len(hs) != 0 {
		t.Fatalf("%v %v", hs, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open("bogus", Options{})
	if err == nil {
		t.Fatal("bogus backend opened")
	}
	for _, b := range Backends() {
		if !strings.Contains(err.Error(), b) {
			t.Errorf("error %q does not list %s", err, b)
		}
	}
}
