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
func (st *stats) release(file string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.claimed, file)
	delete(st.sources, file)
}

// claim reports whether file is not yet followed by any source, and marks
// it followed.
func (st *stats) claim(file string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.claimed[file] {
		return false
	}
	st.claimed[file] = true
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

func (st *stats) source(cfg siem.SourceConfig, file string) *sourceStats {
	st.mu.Lock()
	defer st.mu.Unlock()
	ss := st.sources[file]
	if ss == nil {
		ss = &sourceStats{path: cfg.Path, tag: cfg.Tag, file: file}
		st.sources[file] = ss
	}
	return ss
}

func (ss *sourceStats) read(events, bytes int) {
	ss.mu.Lock()
	ss.events += uint64(events)
	ss.bytes += uint64(bytes)
	ss.mu.Unlock()
}

func (ss *sourceStats) setPaused(p bool, why string) {
	ss.mu.Lock()
	ss.paused = p
	if why != "" {
		ss.lastError, ss.lastErrorAt = why, time.Now()
	}
	ss.mu.Unlock()
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

func (st *stats) output(cfg siem.OutputConfig) *outputStats {
	st.mu.Lock()
	defer st.mu.Unlock()
	o := &outputStats{cfg: cfg}
	st.outputs[cfg.Name] = o
	return o
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
		ss := st.sources[k]
		ss.mu.Lock()
		out.Sources = append(out.Sources, &siemv1.SourceStatus{
			Path: ss.path, Tag: ss.tag, File: ss.file, BytesRead: ss.bytes, EventsRead: ss.events,
			Paused: ss.paused, LastError: ss.lastError, LastErrorAt: ts(ss.lastErrorAt),
		})
		ss.mu.Unlock()
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
		ost := outputs[o.Name]
		if ost == nil {
			continue
		}
		q := sps[o.Name]
		ost.mu.Lock()
		out.Outputs = append(out.Outputs, &siemv1.OutputStatus{
			Name: o.Name, Type: o.Type, Address: o.Address, Connected: ost.connected,
			EventsSent: ost.sentEvents, EventsAcknowledged: ost.sentEvents, BytesSent: ost.sentBytes,
			SpoolEvents: q.entries, SpoolBytes: q.bytes, DroppedEvents: q.dropped, LagSeconds: q.lag.Seconds(),
			LastError: ost.lastError, LastErrorAt: ts(ost.lastErrorAt),
		})
		ost.mu.Unlock()
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
