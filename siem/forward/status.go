package forward

import (
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/siem"
)

type stats struct {
	mu      sync.Mutex
	sources map[string]*sourceStats // by file
	outputs map[string]*outputStats
	claimed map[string]bool // files some source follows
}

// release forgets a file no source follows any more.
func (s *stats) release(file string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.claimed, file)
	delete(s.sources, file)
}

// claim reports whether file is not yet followed by any source, and marks
// it followed.
func (s *stats) claim(file string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.claimed[file] {
		return false
	}
	s.claimed[file] = true
	return true
}

func newStats() *stats {
	return &stats{sources: map[string]*sourceStats{}, outputs: map[string]*outputStats{}, claimed: map[string]bool{}}
}

type sourceStats struct {
	mu          sync.Mutex
	path, tag   string
	file        string
	bytes       uint64
	events      uint64
	paused      bool
	lastError   string
	lastErrorAt time.Time
}

func (s *stats) source(cfg siem.SourceConfig, file string) *sourceStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.sources[file]
	if st == nil {
		st = &sourceStats{path: cfg.Path, tag: cfg.Tag, file: file}
		s.sources[file] = st
	}
	return st
}

func (s *sourceStats) read(events, bytes int) {
	s.mu.Lock()
	s.events += uint64(events)
	s.bytes += uint64(bytes)
	s.mu.Unlock()
}

func (s *sourceStats) setPaused(p bool, why string) {
	s.mu.Lock()
	s.paused = p
	if why != "" {
		s.lastError, s.lastErrorAt = why, time.Now()
	}
	s.mu.Unlock()
}

type outputStats struct {
	mu          sync.Mutex
	cfg         siem.OutputConfig
	connected   bool
	sentEvents  uint64
	sentBytes   uint64
	lastError   string
	lastErrorAt time.Time
}

func (s *stats) output(cfg siem.OutputConfig) *outputStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &outputStats{cfg: cfg}
	s.outputs[cfg.Name] = st
	return st
}

func (o *outputStats) sent(events, bytes int) {
	o.mu.Lock()
	o.connected = true
	o.sentEvents += uint64(events)
	o.sentBytes += uint64(bytes)
	o.mu.Unlock()
}

func (o *outputStats) fail(msg string) {
	o.mu.Lock()
	o.connected = false
	o.lastError, o.lastErrorAt = msg, time.Now()
	o.mu.Unlock()
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Status reports every source and output of the running configuration.
func (f *Forwarder) Status() *siemv1.Status {
	f.mu.Lock()
	st, version, source, cfg, sp := f.stats, f.version, f.source, f.cfg, f.spool
	f.mu.Unlock()
	out := &siemv1.Status{ConfigVersion: version, ConfigSource: source}
	if source == "" {
		out.ConfigSource = "none"
	}
	st.mu.Lock()
	files := make([]string, 0, len(st.sources))
	for k := range st.sources {
		files = append(files, k)
	}
	sort.Strings(files)
	for _, k := range files {
		s := st.sources[k]
		s.mu.Lock()
		out.Sources = append(out.Sources, &siemv1.SourceStatus{
			Path: s.path, Tag: s.tag, File: s.file, BytesRead: s.bytes, EventsRead: s.events,
			Paused: s.paused, LastError: s.lastError, LastErrorAt: ts(s.lastErrorAt),
		})
		s.mu.Unlock()
	}
	outputs := make(map[string]*outputStats, len(st.outputs))
	for k, v := range st.outputs {
		outputs[k] = v
	}
	st.mu.Unlock()
	now := time.Now()
	var sps map[string]spoolQueue
	if sp != nil {
		sps = spoolQueues(sp.Stats(), now)
	}
	for _, o := range cfg.Outputs {
		os := outputs[o.Name]
		if os == nil {
			continue
		}
		q := sps[o.Name]
		os.mu.Lock()
		out.Outputs = append(out.Outputs, &siemv1.OutputStatus{
			Name: o.Name, Type: o.Type, Address: o.Address, Connected: os.connected,
			EventsSent: os.sentEvents, EventsAcknowledged: os.sentEvents, BytesSent: os.sentBytes,
			SpoolEvents: q.entries, SpoolBytes: q.bytes, DroppedEvents: q.dropped, LagSeconds: q.lag.Seconds(),
			LastError: os.lastError, LastErrorAt: ts(os.lastErrorAt),
		})
		os.mu.Unlock()
	}
	return out
}

// outputHealthy reports whether an output's last send succeeded.
func (f *Forwarder) outputHealthy(name string) bool {
	f.mu.Lock()
	st := f.stats
	f.mu.Unlock()
	st.mu.Lock()
	o := st.outputs[name]
	st.mu.Unlock()
	if o == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.connected
}
