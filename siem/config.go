package siem

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the forwarding configuration: the `siem:` section of the agent's
// config file, and what `budctl siem apply -f` pushes to agents.
type Config struct {
	Sources []SourceConfig `yaml:"sources" json:"sources"`
	Outputs []OutputConfig `yaml:"outputs" json:"outputs"`
	Spool   SpoolConfig    `yaml:"spool" json:"spool"`
}

// SourceConfig is one file (or glob) to forward.
type SourceConfig struct {
	// Path is a file path or a glob such as /var/log/app/*.log.
	Path string `yaml:"path" json:"path"`
	Tag  string `yaml:"tag" json:"tag"`
	// Format is linux-audit or raw (default).
	Format string `yaml:"format" json:"format"`
	// MaxLineBytes caps a line; longer lines are split and marked
	// (default 64 KiB).
	MaxLineBytes int `yaml:"max_line_bytes" json:"max_line_bytes,omitempty"`
}

// Formats.
const (
	FormatRaw        = "raw"
	FormatLinuxAudit = "linux-audit"
)

// Output types.
const (
	OutputSyslog    = "syslog"
	OutputRELP      = "relp"
	OutputSplunkHEC = "splunk_hec"
)

// OutputConfig is one destination.
type OutputConfig struct {
	Name string `yaml:"name" json:"name"`
	// Type is syslog (RFC 5424 over TLS with RFC 5425 framing), relp, or
	// splunk_hec.
	Type string `yaml:"type" json:"type"`
	// Address is host:port for syslog and relp; a URL for splunk_hec.
	Address string `yaml:"address" json:"address"`
	// Match selects sources by tag: "audit", "audit.*", "audit.**", "**".
	Match string    `yaml:"match" json:"match"`
	TLS   TLSConfig `yaml:"tls" json:"tls"`
	// Splunk HEC.
	TokenFile string `yaml:"token_file" json:"token_file,omitempty"`
	Index     string `yaml:"index" json:"index,omitempty"`
	Ack       bool   `yaml:"ack" json:"ack,omitempty"`
	// BatchEvents caps the events sent per batch (default 4096).
	BatchEvents int `yaml:"batch_events" json:"batch_events,omitempty"`
	// RELP window: messages in flight (default 16384).
	Window int `yaml:"window" json:"window,omitempty"`
	// ConfirmEachBatch (syslog only) closes the connection after every
	// batch and waits for the receiver to close its side, so a batch counts
	// as sent only once the receiver has read all of it. One TLS handshake
	// per batch.
	ConfirmEachBatch bool `yaml:"confirm_each_batch" json:"confirm_each_batch,omitempty"`
}

// TLSConfig names the TLS material of an output.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file" json:"ca_file,omitempty"`
	CertFile   string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile    string `yaml:"key_file" json:"key_file,omitempty"`
	ServerName string `yaml:"server_name" json:"server_name,omitempty"`
}

// SpoolConfig bounds the disk spool.
type SpoolConfig struct {
	// MaxBytes caps the spool (default 1 GiB). When full, reading stops and
	// the data waits in the source files, unless DropOldest.
	MaxBytes int64 `yaml:"max_bytes" json:"max_bytes,omitempty"`
	// DropOldest drops the oldest spooled events instead of pausing the
	// sources. It loses data; it is off by default.
	DropOldest bool `yaml:"drop_oldest" json:"drop_oldest,omitempty"`
	// FlushInterval bounds how long read events wait to be spooled
	// together (default 50ms): one fsync per batch, not per event.
	FlushInterval time.Duration `yaml:"flush_interval" json:"flush_interval,omitempty"`
}

// Defaults.
const (
	DefaultMaxLineBytes  = 64 << 10
	DefaultSpoolBytes    = 1 << 30
	DefaultBatchEvents   = 4096
	DefaultWindow        = 16384
	DefaultFlushInterval = 50 * time.Millisecond
)

var (
	nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]{0,62})$`)
	tagRe  = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// WithDefaults fills unset values.
func (c Config) WithDefaults() Config {
	out := c
	out.Sources = append([]SourceConfig(nil), c.Sources...)
	out.Outputs = append([]OutputConfig(nil), c.Outputs...)
	for i := range out.Sources {
		s := &out.Sources[i]
		if s.Format == "" {
			s.Format = FormatRaw
		}
		if s.MaxLineBytes == 0 {
			s.MaxLineBytes = DefaultMaxLineBytes
		}
	}
	for i := range out.Outputs {
		o := &out.Outputs[i]
		if o.Match == "" {
			o.Match = "**"
		}
		if o.BatchEvents == 0 {
			o.BatchEvents = DefaultBatchEvents
		}
		if o.Window == 0 {
			o.Window = DefaultWindow
		}
	}
	if out.Spool.MaxBytes == 0 {
		out.Spool.MaxBytes = DefaultSpoolBytes
	}
	if out.Spool.FlushInterval == 0 {
		out.Spool.FlushInterval = DefaultFlushInterval
	}
	return out
}

// Validate says everything that is wrong with c, one problem per line.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Sources) > 0 && len(c.Outputs) == 0 {
		bad("siem: sources are configured but no outputs: nothing would be sent")
	}
	seenPath := map[string]bool{}
	for i, s := range c.Sources {
		where := fmt.Sprintf("siem.sources[%d]", i)
		switch {
		case s.Path == "":
			bad("%s: path is required", where)
		case !path.IsAbs(s.Path):
			bad("%s: path %q must be absolute", where, s.Path)
		case seenPath[s.Path]:
			bad("%s: path %q is listed twice", where, s.Path)
		}
		seenPath[s.Path] = true
		if _, err := path.Match(s.Path, ""); err != nil {
			bad("%s: path %q is not a valid glob: %v", where, s.Path, err)
		}
		if !tagRe.MatchString(s.Tag) {
			bad("%s: tag %q must be dot-separated words of letters, digits, _ or -", where, s.Tag)
		}
		switch s.Format {
		case "", FormatRaw, FormatLinuxAudit:
		default:
			bad("%s: format %q must be %s or %s", where, s.Format, FormatLinuxAudit, FormatRaw)
		}
		if s.MaxLineBytes < 0 || (s.MaxLineBytes > 0 && s.MaxLineBytes < 256) {
			bad("%s: max_line_bytes must be at least 256", where)
		}
	}
	seenName := map[string]bool{}
	for i, o := range c.Outputs {
		where := fmt.Sprintf("siem.outputs[%d]", i)
		if !nameRe.MatchString(o.Name) {
			bad("%s: name %q must be lower-case letters, digits, _ . or -", where, o.Name)
		} else if seenName[o.Name] {
			bad("%s: name %q is used twice", where, o.Name)
		}
		seenName[o.Name] = true
		switch o.Type {
		case OutputSyslog, OutputRELP:
			if _, _, err := splitHostPort(o.Address); err != nil {
				bad("%s: address %q must be host:port", where, o.Address)
			}
			if o.TokenFile != "" || o.Index != "" || o.Ack {
				bad("%s: token_file, index and ack apply only to splunk_hec", where)
			}
			if o.ConfirmEachBatch && o.Type != OutputSyslog {
				bad("%s: confirm_each_batch applies only to syslog", where)
			}
		case OutputSplunkHEC:
			if !strings.HasPrefix(o.Address, "https://") && !strings.HasPrefix(o.Address, "http://") {
				bad("%s: address %q must be a URL such as https://splunk.example.com:8088", where, o.Address)
			}
			if o.TokenFile == "" {
				bad("%s: token_file is required for splunk_hec", where)
			}
		default:
			bad("%s: type %q must be %s, %s or %s", where, o.Type, OutputSyslog, OutputRELP, OutputSplunkHEC)
		}
		if o.Match != "" {
			if err := validPattern(o.Match); err != nil {
				bad("%s: match: %v", where, err)
			}
		}
		if (o.TLS.CertFile == "") != (o.TLS.KeyFile == "") {
			bad("%s: tls.cert_file and tls.key_file go together", where)
		}
		if o.BatchEvents < 0 || o.Window < 0 {
			bad("%s: batch_events and window must not be negative", where)
		}
	}
	if c.Spool.MaxBytes < 0 || (c.Spool.MaxBytes > 0 && c.Spool.MaxBytes < 1<<20) {
		bad("siem.spool.max_bytes must be at least 1 MiB")
	}
	limits := SpoolLimits{MaxBytes: c.Spool.MaxBytes}
	for i, s := range c.Sources {
		// A line must fit in a spool batch many times over, or it could
		// never be spooled and its source would stall (SpoolLimits).
		if int64(s.MaxLineBytes) > limits.MaxLineBytes() {
			bad("siem.sources[%d]: max_line_bytes %d is too large for a spool of %d bytes (at most 1/16 of it)", i, s.MaxLineBytes, limits.Cap())
		}
	}
	if c.Spool.FlushInterval < 0 {
		bad("siem.spool.flush_interval must not be negative")
	}
	return errors.Join(errs...)
}

func splitHostPort(a string) (string, string, error) {
	i := strings.LastIndexByte(a, ':')
	if i <= 0 || i == len(a)-1 {
		return "", "", errors.New("missing port")
	}
	return a[:i], a[i+1:], nil
}

func validPattern(p string) error {
	for _, part := range strings.Split(p, ".") {
		if part == "*" || part == "**" {
			continue
		}
		if !tagRe.MatchString(part) {
			return fmt.Errorf("pattern %q: %q is neither a word, * nor **", p, part)
		}
	}
	return nil
}

// Match reports whether tag matches pattern, fluentd style: "*" matches one
// dot-separated part, "**" zero or more parts, so "audit.**" matches
// "audit" and "audit.kernel". It runs in O(parts of pattern x parts of tag):
// patterns come from pushed configurations and must not be able to stall
// the agent.
func Match(pattern, tag string) bool {
	p, t := strings.Split(pattern, "."), strings.Split(tag, ".")
	// ok[j]: the pattern parts seen so far match t[:j].
	ok := make([]bool, len(t)+1)
	ok[0] = true
	next := make([]bool, len(t)+1)
	for _, part := range p {
		clear(next)
		switch part {
		case "**":
			reach := false
			for j := range ok {
				reach = reach || ok[j]
				next[j] = reach
			}
		case "*":
			for j := 1; j <= len(t); j++ {
				next[j] = ok[j-1]
			}
		default:
			for j := 1; j <= len(t); j++ {
				next[j] = ok[j-1] && t[j-1] == part
			}
		}
		ok, next = next, ok
	}
	return ok[len(t)]
}

// ParseYAML reads a forwarding configuration: either a document with a
// top-level `siem:` key (as in the agent's config file) or the section
// itself. Unknown keys are errors. The result is validated.
func ParseYAML(b []byte) (Config, error) {
	var top map[string]any
	if err := yaml.Unmarshal(b, &top); err != nil {
		return Config{}, err
	}
	if _, ok := top["siem"]; ok {
		// The agent-config form: its errors name the bad key.
		var wrapped struct {
			SIEM *Config `yaml:"siem"`
		}
		if err := strictYAML(b, &wrapped); err != nil {
			return Config{}, err
		}
		if wrapped.SIEM == nil {
			return Config{}, errors.New("siem: the siem section is empty")
		}
		if len(wrapped.SIEM.Sources) == 0 && len(wrapped.SIEM.Outputs) == 0 {
			return Config{}, errors.New("siem: the configuration has no sources and no outputs")
		}
		return *wrapped.SIEM, wrapped.SIEM.Validate()
	}
	var c Config
	if err := strictYAML(b, &c); err != nil {
		return c, err
	}
	if len(c.Sources) == 0 && len(c.Outputs) == 0 {
		return c, errors.New("siem: the configuration has no sources and no outputs")
	}
	return c, c.Validate()
}

func strictYAML(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("siem: the configuration is empty")
		}
		return err
	}
	return nil
}
