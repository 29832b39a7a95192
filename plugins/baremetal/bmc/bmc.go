// Package bmc drives a host's baseboard management controller: power on,
// off, reset, status, and a one-time network (PXE) boot. IPMI v2.0 over
// LAN (lanplus, RMCP+) through github.com/bougou/go-ipmi, a pure-Go
// client, so the provider needs no ipmitool on the controller machine.
//
// BMCs are slow and flaky (Metal3 and OpenShift's installers learned it:
// see shared/EXAMPLES.md), so every operation opens its own session and
// always closes it, operations on one BMC are serialised, a session that
// cannot be opened is retried with backoff, and "the BMC does not answer"
// (ErrUnreachable) is a different error from a refused login (ErrAuth) and
// from power that is off. The Controller interface is small so that a
// Redfish implementation can stand beside IPMI later.
package bmc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// Errors callers tell apart.
var (
	ErrUnreachable = errors.New("BMC not answering")
	ErrAuth        = errors.New("BMC refused the login")
)

// Power is a machine's power as the BMC reports it.
type Power bool

// Action is what SetPower does.
type Action string

const (
	On    Action = "on"
	Off   Action = "off"
	Reset Action = "reset"
)

// Controller is one BMC.
type Controller interface {
	// PowerOn reports whether the machine is powered on.
	PowerOn(ctx context.Context) (bool, error)
	// SetPower turns the machine on, off (hard), or resets it.
	SetPower(ctx context.Context, a Action) error
	// BootPXE makes the next boot (only) a network boot.
	BootPXE(ctx context.Context) error
	// String names the BMC in messages (its address).
	String() string
}

// Endpoint is where a BMC is and how to log in.
type Endpoint struct {
	Address  string // host name or IP
	Port     int    // 623 when 0
	Username string
	Password string
}

// DefaultPort is IPMI's RMCP port.
const DefaultPort = 623

func (e Endpoint) hostPort() string {
	p := e.Port
	if p == 0 {
		p = DefaultPort
	}
	return net.JoinHostPort(e.Address, strconv.Itoa(p))
}

// IPMIOptions tune the IPMI client.
type IPMIOptions struct {
	// Timeout is one request's wait for an answer (2 s; ipmitool's 1 s is
	// too short for busy BMCs); Retries how often a request is sent again
	// (2).
	Timeout time.Duration
	Retries int
	// Attempts is how often a session is tried before the BMC counts as
	// not answering (3), Backoff the first wait between attempts (500 ms,
	// doubling).
	Attempts int
	Backoff  time.Duration
}

// IPMI is a Controller over IPMI v2.0 lanplus.
type IPMI struct {
	ep   Endpoint
	opts IPMIOptions
}

// NewIPMI returns the BMC at ep.
func NewIPMI(ep Endpoint, opts IPMIOptions) (*IPMI, error) {
	if ep.Address == "" {
		return nil, errors.New("the BMC has no address: set ipmi_address in the host's vars or its entry in ipmi_credentials_file")
	}
	if ep.Username == "" {
		return nil, fmt.Errorf("BMC %s has no username: set ipmi_username, or username in ipmi_credentials_file", ep.hostPort())
	}
	if len(ep.Username) > 16 {
		return nil, fmt.Errorf("BMC %s: username %q is longer than IPMI's 16 characters", ep.hostPort(), ep.Username)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Retries <= 0 {
		opts.Retries = 2
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 3
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 500 * time.Millisecond
	}
	return &IPMI{ep: ep, opts: opts}, nil
}

func (b *IPMI) String() string { return "BMC " + b.ep.hostPort() }

// locks serialises the operations on each BMC across every IPMI value of
// the process: some BMCs hold only a few sessions and refuse or freeze on
// more.
var locks sync.Map // host:port -> *sync.Mutex

func (b *IPMI) lock() func() {
	m, _ := locks.LoadOrStore(b.ep.hostPort(), &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// session runs f in a fresh session and closes it, whatever f returns.
func (b *IPMI) session(ctx context.Context, what string, f func(c *client.Client) error) error {
	defer b.lock()()
	port := b.ep.Port
	if port == 0 {
		port = DefaultPort
	}
	var last error
	wait := b.opts.Backoff
	for attempt := 1; attempt <= b.opts.Attempts; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: %s: %w", b, what, ctx.Err())
			case <-time.After(wait):
			}
			wait *= 2
		}
		c, err := client.NewClient(b.ep.Address, port, b.ep.Username, b.ep.Password)
		if err != nil {
			return fmt.Errorf("%s: %w", b, err)
		}
		c.WithTimeout(b.opts.Timeout).WithRetry(b.opts.Retries).WithMaxPrivilegeLevel(types.PrivilegeLevelAdministrator)
		// Try the suites strongest first without asking the BMC for its
		// list: BMCs that do not answer that request (ipmi_sim among
		// them) cost a full timeout and its retries on every session.
		c.WithCipherSuiteID(types.PreferredCiphers...)
		if err := c.Connect(ctx); err != nil {
			last = classify(err)
			if errors.Is(last, ErrAuth) {
				return fmt.Errorf("%s: %s: %w (user %q): check the username and password in ipmi_credentials_file or the host's ipmi_ vars", b, what, ErrAuth, b.ep.Username)
			}
			continue
		}
		err = f(c)
		// Always close: a BMC keeps an abandoned session until it times
		// out, and a few of those lock everyone out.
		_ = c.Close(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", b, what, classify(err))
		}
		return nil
	}
	return fmt.Errorf("%s: %s: %w after %d attempts (is the address right, and IPMI over LAN enabled on it?): %v", b, what, ErrUnreachable, b.opts.Attempts, last)
}

// classify maps go-ipmi's errors onto ErrAuth and ErrUnreachable.
func classify(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, client.ErrRAKPAuthentication),
		strings.Contains(msg, "RAKP authentication"),
		strings.Contains(msg, "unauthorized name"),
		strings.Contains(msg, "invalid role"):
		return fmt.Errorf("%w: %v", ErrAuth, err)
	case errors.Is(err, context.DeadlineExceeded),
		strings.Contains(msg, "i/o timeout"),
		strings.Contains(msg, "connection refused"),
		strings.Contains(msg, "no route to host"),
		strings.Contains(msg, "network is unreachable"),
		strings.Contains(msg, "UDP exchange error"):
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	return err
}

// PowerOn implements Controller.
func (b *IPMI) PowerOn(ctx context.Context) (bool, error) {
	var on bool
	err := b.session(ctx, "chassis status", func(c *client.Client) error {
		st, err := c.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		on = st.PowerIsOn
		return nil
	})
	return on, err
}

// SetPower implements Controller.
func (b *IPMI) SetPower(ctx context.Context, a Action) error {
	var ctl chassis.ChassisControl
	switch a {
	case On:
		ctl = chassis.ChassisControlPowerUp
	case Off:
		ctl = chassis.ChassisControlPowerDown
	case Reset:
		ctl = chassis.ChassisControlHardReset
	default:
		return fmt.Errorf("power action %q: use on, off or reset", a)
	}
	return b.session(ctx, "chassis power "+string(a), func(c *client.Client) error {
		_, err := c.ChassisControl(ctx, ctl)
		return err
	})
}

// BootPXE implements Controller.
func (b *IPMI) BootPXE(ctx context.Context) error {
	return b.session(ctx, "boot device pxe", func(c *client.Client) error {
		return c.SetBootDevice(ctx, types.BootDeviceSelectorForcePXE, types.BIOSBootTypeLegacy, false)
	})
}
