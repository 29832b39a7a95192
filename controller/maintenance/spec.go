package maintenance

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults that WithDefaults fills in for zero fields.
const (
	DefaultDrainTimeout    = 300 * time.Second
	DefaultDrainAttempts   = 3
	DefaultDrainRetryDelay = 30 * time.Second
	DefaultTaskTimeout     = 30 * time.Minute
	DefaultRebootTimeout   = 15 * time.Minute
	DefaultHealthTimeout   = 10 * time.Minute
	DefaultMaxFailures     = 1
	DefaultUpgradeTimeout  = 2 * time.Minute
)

// MaxTaskBytes is the largest task script a campaign carries. The script is
// stored in the campaign and shipped in the command's parameters, so it is
// kept small; larger payloads belong in an artifact the script fetches.
const MaxTaskBytes = 64 << 10

// DrainFailurePolicy says what happens to a node whose last drain attempt
// failed (kured users asked for the choice).
type DrainFailurePolicy string

// Drain failure policies.
const (
	// DrainFailureUncordon uncordons the node at once so it serves again,
	// and counts it failed. The default.
	DrainFailureUncordon DrainFailurePolicy = "uncordon"
	// DrainFailureCordon counts the node failed and leaves it cordoned.
	DrainFailureCordon DrainFailurePolicy = "cordon"
	// DrainFailureProceed goes on with the task and reboot on the cordoned,
	// partly drained node (kured's --force-reboot). Not counted a failure.
	DrainFailureProceed DrainFailurePolicy = "proceed"
)

// DomainLimit caps the nodes in progress per failure domain: the nodes whose
// label Label has the same value. Nodes without the label form one domain
// together (the value ""), so they are never all taken at once by accident.
type DomainLimit struct {
	Label string `json:"label"`
	Max   int    `json:"max"`
}

// String returns the limit as LABEL=K.
func (d DomainLimit) String() string { return d.Label + "=" + strconv.Itoa(d.Max) }

// ParseDomainLimit parses --per-domain LABEL=K.
func ParseDomainLimit(s string) (DomainLimit, error) {
	label, k, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || strings.TrimSpace(label) == "" {
		return DomainLimit{}, fmt.Errorf("per-domain %q: want LABEL=K, such as rack=2", s)
	}
	n, err := strconv.Atoi(strings.TrimSpace(k))
	if err != nil {
		return DomainLimit{}, fmt.Errorf("per-domain %q: K must be a whole number, such as rack=2", s)
	}
	d := DomainLimit{Label: strings.TrimSpace(label), Max: n}
	if err := d.validate(); err != nil {
		return DomainLimit{}, err
	}
	return d, nil
}

func (d DomainLimit) validate() error {
	if d.Label == "" {
		return errors.New("per-domain needs a label: --per-domain LABEL=K, such as rack=2")
	}
	if d.Max < 1 {
		return fmt.Errorf("per-domain %s: K must be at least 1 (0 would never start a node)", d)
	}
	return nil
}

// ParseSelector parses --selector k=v flags into a label selector.
func ParseSelector(flags []string) (map[string]string, error) {
	sel := map[string]string{}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("selector %q: want key=value", f)
		}
		if old, dup := sel[k]; dup && old != v {
			return nil, fmt.Errorf("selector key %q given twice (%q and %q); a node has one value per label", k, old, v)
		}
		sel[k] = strings.TrimSpace(v)
	}
	return sel, nil
}

// Spec is what the operator asked for. Zero durations and counts other than
// MaxUnavailable mean the default (WithDefaults); New stores the spec with
// its defaults filled in, so a stored campaign never changes meaning when a
// default does.
type Spec struct {
	// Selector chose the nodes (every label must match). The nodes are
	// resolved once, when the campaign is made; see New.
	Selector map[string]string `json:"selector"`
	// MaxUnavailable caps the nodes the campaign holds at once: in progress,
	// or failed and left cordoned by the campaign.
	MaxUnavailable int `json:"max_unavailable"`
	// PerDomain, when set, caps the nodes held per failure domain the same
	// way.
	PerDomain *DomainLimit `json:"per_domain,omitempty"`

	// DrainTimeout bounds one drain attempt (separate from the pods' grace
	// period).
	DrainTimeout time.Duration `json:"drain_timeout"`
	// DrainAttempts is how many times a drain is tried before the node's
	// drain has failed.
	DrainAttempts int `json:"drain_attempts"`
	// DrainRetryDelay is the pause between drain attempts.
	DrainRetryDelay time.Duration `json:"drain_retry_delay"`
	// GracePeriod overrides the pods' termination grace period; 0 keeps
	// each pod's own.
	GracePeriod time.Duration `json:"grace_period,omitempty"`
	// OnDrainFailure is what happens after the last failed attempt.
	OnDrainFailure DrainFailurePolicy `json:"on_drain_failure"`

	// Task is the script the agent runs (command kind maintenance.task);
	// empty for none.
	Task string `json:"task,omitempty"`
	// TaskTimeout is the agent's limit on the task.
	TaskTimeout time.Duration `json:"task_timeout"`
	// Reboot reboots the node after the task (command kind
	// maintenance.reboot).
	Reboot bool `json:"reboot"`
	// RebootTimeout bounds the wait, from the reboot command, for the agent
	// to come back with a new boot id.
	RebootTimeout time.Duration `json:"reboot_timeout"`
	// HealthTimeout bounds the wait, after the task or reboot, for the Node
	// Ready, the agent connected and the GPUs back as they were.
	HealthTimeout time.Duration `json:"health_timeout"`

	// Upgrade, when set, makes the campaign an agent upgrade: each node's
	// agent installs the bud-agent artifact of Upgrade.Version for its
	// platform (command agent.upgrade) and must come back on it; no
	// cordon, drain, task or reboot, since only the agent restarts.
	Upgrade *Upgrade `json:"upgrade,omitempty"`

	// Window limits when a new node may start; the zero Window is always.
	Window Window `json:"window,omitzero"`
	// MaxFailures trips the circuit breaker: after this many failed nodes
	// the campaign stops by itself.
	MaxFailures int `json:"max_failures"`
}

// Upgrade is an agent upgrade's part of a Spec.
type Upgrade struct {
	// Version is what the new agents report.
	Version string `json:"version"`
	// Timeout is the agent's: how long the new binary has, from the
	// restart, to connect before the agent rolls itself back. The campaign
	// waits UpgradeGrace longer for the agent to be back on it.
	Timeout time.Duration `json:"timeout"`
}

// Validate checks the spec and returns every problem at once, each saying
// what to change.
func (s Spec) Validate() error {
	var errs []error
	if len(s.Selector) == 0 {
		errs = append(errs, errors.New("selector is empty: give at least one --selector key=value (a campaign never takes the whole fleet by default)"))
	}
	keys := make([]string, 0, len(s.Selector))
	for k := range s.Selector {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.TrimSpace(k) == "" {
			errs = append(errs, fmt.Errorf("selector =%s has an empty key: want key=value", s.Selector[k]))
		}
	}
	if s.MaxUnavailable < 1 {
		errs = append(errs, fmt.Errorf("max-unavailable must be at least 1 (got %d): 0 would never start a node", s.MaxUnavailable))
	}
	if s.PerDomain != nil {
		if err := s.PerDomain.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"drain-timeout", s.DrainTimeout},
		{"drain-retry-delay", s.DrainRetryDelay},
		{"grace-period", s.GracePeriod},
		{"task-timeout", s.TaskTimeout},
		{"reboot-timeout", s.RebootTimeout},
		{"health-timeout", s.HealthTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative (got %s)", d.name, d.v))
		}
	}
	if s.DrainAttempts < 0 {
		errs = append(errs, fmt.Errorf("drain-attempts must not be negative (got %d); 0 means the default, %d", s.DrainAttempts, DefaultDrainAttempts))
	}
	switch s.OnDrainFailure {
	case "", DrainFailureUncordon, DrainFailureCordon, DrainFailureProceed:
	default:
		errs = append(errs, fmt.Errorf("on-drain-failure %q: want uncordon, cordon or proceed", s.OnDrainFailure))
	}
	if s.MaxFailures < 0 {
		errs = append(errs, fmt.Errorf("max-failures must not be negative (got %d); 0 means the default, %d", s.MaxFailures, DefaultMaxFailures))
	}
	switch u := s.Upgrade; {
	case u != nil && (s.Task != "" || s.Reboot):
		errs = append(errs, errors.New("an agent upgrade runs no task and no reboot: start those as a maintenance campaign of their own"))
	case u != nil && strings.TrimSpace(u.Version) == "":
		errs = append(errs, errors.New("an agent upgrade needs the --version its agents are to run"))
	case u != nil && u.Timeout < 0:
		errs = append(errs, fmt.Errorf("upgrade-timeout must not be negative (got %s)", u.Timeout))
	case u == nil && s.Task == "" && !s.Reboot:
		errs = append(errs, errors.New("nothing to do: give --task FILE, --reboot, or both"))
	}
	if len(s.Task) > MaxTaskBytes {
		errs = append(errs, fmt.Errorf("task is %d bytes; the limit is %d (keep the script small and fetch larger payloads from it)", len(s.Task), MaxTaskBytes))
	}
	if s.Window.text != "" && s.Window.IsZero() {
		errs = append(errs, fmt.Errorf("window %q never opens", s.Window.text))
	}
	return errors.Join(errs...)
}

// WithDefaults returns s with its zero fields set to the defaults.
func (s Spec) WithDefaults() Spec {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&s.DrainTimeout, DefaultDrainTimeout)
	def(&s.DrainRetryDelay, DefaultDrainRetryDelay)
	def(&s.TaskTimeout, DefaultTaskTimeout)
	def(&s.RebootTimeout, DefaultRebootTimeout)
	def(&s.HealthTimeout, DefaultHealthTimeout)
	if s.DrainAttempts == 0 {
		s.DrainAttempts = DefaultDrainAttempts
	}
	if s.OnDrainFailure == "" {
		s.OnDrainFailure = DrainFailureUncordon
	}
	if s.MaxFailures == 0 {
		s.MaxFailures = DefaultMaxFailures
	}
	if s.Upgrade != nil {
		u := *s.Upgrade
		def(&u.Timeout, DefaultUpgradeTimeout)
		s.Upgrade = &u
	}
	return s
}
