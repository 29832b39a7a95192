// Package forward runs audit-log forwarding: it tails the configured
// sources, parses them, writes the events into the disk spool together with
// the sources' read checkpoints (one transaction, one fsync per batch), and
// sends each output's queue, removing events from the spool only once the
// output acknowledged them. A crash anywhere re-reads or re-sends, never
// skips: delivery is at-least-once, duplicates are bounded by one batch per
// source and output.
package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
	"github.com/bud-ecosystem/budfleet/siem/spool"

	"github.com/bud-ecosystem/budfleet/pki"
)

// Options configure a Forwarder.
type Options struct {
	// SpoolPath is the spool's bbolt file.
	SpoolPath string
	// SpoolLockHint ends the error when another process holds the spool,
	// e.g. "is another bud-agent running with the same --state-dir?".
	SpoolLockHint string
	Logger        *slog.Logger
	// Hostname goes into every message.
	Hostname string
	// AppName is the syslog APP-NAME, which SIEM rules match on: each
	// daemon passes its own (default "bud-agent").
	AppName string
	// Dial makes an output from its config, hostname and app name; nil
	// means the real outputs.
	Dial func(o siem.OutputConfig, hostname, appName string) (output.Output, error)
	// NoSync is for tests and benchmarks only.
	NoSync bool
	// NoDirect sends every event through the spool, also while the
	// output keeps up (direct.go); for tests and benchmarks.
	NoDirect bool
	// AuditMaxWait is how long a linux-audit event may wait for its EOE
	// (audit.GrouperOptions.MaxWait; 0 is its default, 2s). For tests that
	// must know an event is still open, however slow the machine.
	AuditMaxWait time.Duration
}

// Forwarder runs one configuration at a time; Apply swaps it without a
// restart.
type Forwarder struct {
	opts Options
	log  *slog.Logger
	// spool is opened by the first Apply and kept until Close.
	spool *spool.Spool

	mu      sync.Mutex
	cfg     siem.Config
	version uint64
	source  string
	cancel  context.CancelFunc
	done    chan struct{}
	stats   *stats
	// directs are the running outputs' handoffs (direct.go), by name.
	directs map[string]*direct
}

// New opens the spool. Run nothing until Apply.
func New(opts Options) (*Forwarder, error) {
	if opts.SpoolPath == "" {
		return nil, errors.New("forward: SpoolPath must be set")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.AppName == "" {
		opts.AppName = "bud-agent"
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.Dial == nil {
		opts.Dial = dialOutput
	}
	if err := pki.PrivateDir(filepath.Dir(opts.SpoolPath)); err != nil {
		return nil, err
	}
	return &Forwarder{opts: opts, log: opts.Logger.With("component", "siem"), stats: newStats()}, nil
}

// openSpool opens the spool once and sets the limits of cfg on it; a new
// configuration changes the limits in place.
func (f *Forwarder) openSpool(cfg siem.Config) error {
	if f.spool == nil {
		sp, err := spool.Open(f.opts.SpoolPath, spool.Options{MaxBytes: cfg.Spool.MaxBytes, DropOldest: cfg.Spool.DropOldest, NoSync: f.opts.NoSync, LockHint: f.opts.SpoolLockHint})
		if err != nil {
			return fmt.Errorf("open SIEM spool: %w", err)
		}
		f.mu.Lock()
		f.spool = sp
		f.mu.Unlock()
		return nil
	}
	return f.spool.SetLimits(cfg.Spool.MaxBytes, cfg.Spool.DropOldest)
}

// Apply replaces the running configuration. version and source are what
// Status reports (0 and "local" for the config file). A configuration that
// does not validate is refused and the old one keeps running.
func (f *Forwarder) Apply(ctx context.Context, cfg siem.Config, version uint64, source string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	f.mu.Lock()
	prev := f.cfg
	f.mu.Unlock()
	if err := f.openSpool(cfg); err != nil {
		return err // the old configuration keeps running
	}
	f.Stop()
	f.rehomeBacklog(prev, cfg)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	f.mu.Lock()
	f.cfg, f.version, f.source, f.cancel, f.done = cfg, version, source, cancel, done
	f.stats = newStats()
	st := f.stats
	f.directs = map[string]*direct{}
	for _, o := range cfg.Outputs {
		f.directs[o.Name] = newDirect(handoffEvents(o))
	}
	directs := f.directs
	f.mu.Unlock()

	var wg sync.WaitGroup
	for _, o := range cfg.Outputs {
		ost := st.output(o)
		d := directs[o.Name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.runOutput(rctx, o, ost, d)
		}()
	}
	for _, s := range cfg.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.runSources(rctx, cfg, s, st)
		}()
	}
	go func() { wg.Wait(); close(done) }()
	f.log.Info("forwarding configuration applied", "version", version, "source", source, "sources", len(cfg.Sources), "outputs", len(cfg.Outputs))
	return nil
}

// directFor returns the handoff of the running output name (nil if none).
func (f *Forwarder) directFor(name string) *direct {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.opts.NoDirect {
		return nil
	}
	return f.directs[name]
}

// Stop ends the running configuration and waits for it.
func (f *Forwarder) Stop() {
	f.mu.Lock()
	cancel, done := f.cancel, f.done
	f.cancel, f.done = nil, nil
	f.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// Close stops forwarding and closes the spool.
func (f *Forwarder) Close() error {
	f.Stop()
	if f.spool == nil {
		return nil
	}
	return f.spool.Close()
}

// Version returns the version and source of the running configuration.
func (f *Forwarder) Version() (uint64, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.version, f.source
}

// rehomeBacklog moves what is spooled for outputs the new configuration no
// longer has into the outputs that match each event's tag, so a renamed or
// removed output strands nothing; events no output matches are dropped, and
// said so.
func (f *Forwarder) rehomeBacklog(prev, cfg siem.Config) {
	configured := map[string]bool{}
	for _, o := range cfg.Outputs {
		configured[o.Name] = true
	}
	// Outputs that were already running have their own copy of every event
	// they match: only new outputs take over a removed one's backlog.
	existed := map[string]bool{}
	for _, o := range prev.Outputs {
		existed[o.Name] = true
	}
	for q, qs := range f.spool.Stats().Queues {
		if configured[q] || qs.Entries == 0 {
			continue
		}
		moved, dropped, err := f.spool.Move(q, func(data []byte) []string {
			ev, err := decodeEvent(data)
			if err != nil {
				return nil
			}
			var to []string
			for _, o := range cfg.Outputs {
				if !existed[o.Name] && siem.Match(o.Match, ev.Tag) {
					to = append(to, o.Name)
				}
			}
			return to
		})
		if err != nil {
			f.log.Error("move the backlog of a removed output", "queue", q, "error", err)
			continue
		}
		if dropped > 0 {
			f.log.Warn("dropped spooled events that no configured output matches", "queue", q, "dropped", dropped, "moved", moved)
		} else {
			f.log.Info("moved the backlog of a removed output", "queue", q, "moved", moved)
		}
	}
}
