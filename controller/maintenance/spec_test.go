package maintenance

import (
	"strings"
	"testing"
	"time"
)

func TestSpecValidate(t *testing.T) {
	ok := func() Spec {
		return Spec{Selector: map[string]string{"pool": "gpu"}, MaxUnavailable: 1, Task: "true"}
	}
	for _, tc := range []struct {
		name string
		edit func(s *Spec)
		want []string // each must be in the error; none: valid
	}{
		{"minimal", func(s *Spec) {}, nil},
		{"reboot only", func(s *Spec) { s.Task, s.Reboot = "", true }, nil},
		{"empty selector", func(s *Spec) { s.Selector = nil }, []string{"selector is empty: give at least one --selector key=value"}},
		{"empty selector key", func(s *Spec) { s.Selector = map[string]string{"": "x"} }, []string{"selector =x has an empty key"}},
		{"max-unavailable 0", func(s *Spec) { s.MaxUnavailable = 0 }, []string{"max-unavailable must be at least 1 (got 0): 0 would never start a node"}},
		{"per-domain K 0", func(s *Spec) { s.PerDomain = &DomainLimit{Label: "rack"} }, []string{"per-domain rack=0: K must be at least 1 (0 would never start a node)"}},
		{"per-domain no label", func(s *Spec) { s.PerDomain = &DomainLimit{Max: 2} }, []string{"per-domain needs a label"}},
		{"negative drain timeout", func(s *Spec) { s.DrainTimeout = -time.Second }, []string{"drain-timeout must not be negative (got -1s)"}},
		{"negative task timeout", func(s *Spec) { s.TaskTimeout = -time.Minute }, []string{"task-timeout must not be negative (got -1m0s)"}},
		{"negative reboot timeout", func(s *Spec) { s.RebootTimeout = -1 }, []string{"reboot-timeout must not be negative"}},
		{"negative health timeout", func(s *Spec) { s.HealthTimeout = -1 }, []string{"health-timeout must not be negative"}},
		{"negative grace period", func(s *Spec) { s.GracePeriod = -1 }, []string{"grace-period must not be negative"}},
		{"negative drain attempts", func(s *Spec) { s.DrainAttempts = -1 }, []string{"drain-attempts must not be negative (got -1); 0 means the default, 3"}},
		{"negative max failures", func(s *Spec) { s.MaxFailures = -2 }, []string{"max-failures must not be negative (got -2); 0 means the default, 1"}},
		{"bad drain policy", func(s *Spec) { s.OnDrainFailure = "ignore" }, []string{`on-drain-failure "ignore": want uncordon, cordon or proceed`}},
		{"nothing to do", func(s *Spec) { s.Task = "" }, []string{"nothing to do: give --task FILE, --reboot, or both"}},
		{"task too large", func(s *Spec) { s.Task = strings.Repeat("x", MaxTaskBytes+1) }, []string{"task is 65537 bytes; the limit is 65536"}},
		{"all at once", func(s *Spec) { s.Selector, s.MaxUnavailable, s.DrainTimeout = nil, 0, -1 },
			[]string{"selector is empty", "max-unavailable must be at least 1", "drain-timeout must not be negative"}},
	} {
		s := ok()
		tc.edit(&s)
		err := s.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q; want it to say %q", tc.name, err, w)
			}
		}
	}
}

func TestSpecWithDefaults(t *testing.T) {
	s := Spec{Selector: map[string]string{"a": "b"}, MaxUnavailable: 2, Task: "x", DrainTimeout: time.Minute}.WithDefaults()
	if s.DrainTimeout != time.Minute || s.DrainAttempts != 3 || s.DrainRetryDelay != 30*time.Second || s.TaskTimeout != 30*time.Minute ||
		s.RebootTimeout != 15*time.Minute || s.HealthTimeout != 10*time.Minute || s.MaxFailures != 1 || s.OnDrainFailure != DrainFailureUncordon {
		t.Errorf("defaults %+v", s)
	}
}

func TestParseDomainLimit(t *testing.T) {
	if d, err := ParseDomainLimit(" rack = 2 "); err != nil || d != (DomainLimit{Label: "rack", Max: 2}) || d.String() != "rack=2" {
		t.Errorf("ParseDomainLimit = %+v, %v", d, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"rack", `per-domain "rack": want LABEL=K, such as rack=2`},
		{"=2", `per-domain "=2": want LABEL=K`},
		{"rack=two", `per-domain "rack=two": K must be a whole number`},
		{"rack=0", `per-domain rack=0: K must be at least 1`},
	} {
		if _, err := ParseDomainLimit(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseDomainLimit(%q) = %v; want %q", tc.in, err, tc.want)
		}
	}
}

func TestParseSelector(t *testing.T) {
	sel, err := ParseSelector([]string{"pool=gpu", "zone = a", "pool=gpu"})
	if err != nil || len(sel) != 2 || sel["pool"] != "gpu" || sel["zone"] != "a" {
		t.Errorf("ParseSelector = %v, %v", sel, err)
	}
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"pool"}, `selector "pool": want key=value`},
		{[]string{"=gpu"}, `selector "=gpu": want key=value`},
		{[]string{"pool=a", "pool=b"}, `selector key "pool" given twice ("a" and "b")`},
	} {
		if _, err := ParseSelector(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSelector(%q) = %v; want %q", tc.in, err, tc.want)
		}
	}
}
