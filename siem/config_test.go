package siem

import (
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{
		Sources: []SourceConfig{
			{Path: "/var/log/audit/audit.log", Tag: "audit.kernel", Format: FormatLinuxAudit},
			{Path: "/var/log/app/*.log", Tag: "app"},
		},
		Outputs: []OutputConfig{
			{Name: "soc", Type: OutputSyslog, Address: "siem.example.com:6514", Match: "audit.**",
				TLS: TLSConfig{CAFile: "/etc/bud/ca.pem", CertFile: "/etc/bud/c.pem", KeyFile: "/etc/bud/k.pem"}},
			{Name: "relp-1", Type: OutputRELP, Address: "[::1]:2514", Window: 128},
			{Name: "splunk", Type: OutputSplunkHEC, Address: "https://splunk.example.com:8088", TokenFile: "/etc/bud/hec", Index: "main", Ack: true},
		},
		Spool: SpoolConfig{MaxBytes: 1 << 20, FlushInterval: time.Second},
	}
}

func TestValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("empty config: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(c *Config)
		want   []string // every one must appear in the error
	}{
		{"no outputs", func(c *Config) { c.Outputs = nil }, []string{"no outputs"}},
		{"source path missing", func(c *Config) { c.Sources[0].Path = "" }, []string{"siem.sources[0]", "path is required"}},
		{"relative path", func(c *Config) { c.Sources[1].Path = "var/log/x.log" }, []string{"siem.sources[1]", "path", "absolute"}},
		{"path twice", func(c *Config) { c.Sources[1].Path = c.Sources[0].Path }, []string{"siem.sources[1]", "path", "listed twice"}},
		{"bad glob", func(c *Config) { c.Sources[1].Path = "/var/log/[a.log" }, []string{"siem.sources[1]", "path", "glob"}},
		{"no tag", func(c *Config) { c.Sources[0].Tag = "" }, []string{"siem.sources[0]", "tag"}},
		{"bad tag", func(c *Config) { c.Sources[0].Tag = "audit..x" }, []string{"siem.sources[0]", "tag", "audit..x"}},
		{"tag with space", func(c *Config) { c.Sources[0].Tag = "a b" }, []string{"siem.sources[0]", "tag"}},
		{"bad format", func(c *Config) { c.Sources[0].Format = "json" }, []string{"siem.sources[0]", "format", "json"}},
		{"small max_line_bytes", func(c *Config) { c.Sources[0].MaxLineBytes = 100 }, []string{"siem.sources[0]", "max_line_bytes"}},
		{"negative max_line_bytes", func(c *Config) { c.Sources[0].MaxLineBytes = -1 }, []string{"siem.sources[0]", "max_line_bytes"}},
		{"no name", func(c *Config) { c.Outputs[0].Name = "" }, []string{"siem.outputs[0]", "name"}},
		{"upper-case name", func(c *Config) { c.Outputs[0].Name = "SOC" }, []string{"siem.outputs[0]", "name", "SOC"}},
		{"name twice", func(c *Config) { c.Outputs[1].Name = "soc" }, []string{"siem.outputs[1]", "name", "used twice"}},
		{"bad type", func(c *Config) { c.Outputs[0].Type = "kafka" }, []string{"siem.outputs[0]", "type", "kafka"}},
		{"no type", func(c *Config) { c.Outputs[0].Type = "" }, []string{"siem.outputs[0]", "type"}},
		{"no port", func(c *Config) { c.Outputs[0].Address = "siem.example.com" }, []string{"siem.outputs[0]", "address", "host:port"}},
		{"empty port", func(c *Config) { c.Outputs[1].Address = "siem:" }, []string{"siem.outputs[1]", "address"}},
		{"no address", func(c *Config) { c.Outputs[1].Address = "" }, []string{"siem.outputs[1]", "address"}},
		{"hec option on syslog", func(c *Config) { c.Outputs[0].TokenFile = "/x" }, []string{"siem.outputs[0]", "token_file"}},
		{"ack on relp", func(c *Config) { c.Outputs[1].Ack = true }, []string{"siem.outputs[1]", "ack"}},
		{"hec address not a URL", func(c *Config) { c.Outputs[2].Address = "splunk:8088" }, []string{"siem.outputs[2]", "address", "URL"}},
		{"hec without token", func(c *Config) { c.Outputs[2].TokenFile = "" }, []string{"siem.outputs[2]", "token_file"}},
		{"bad match", func(c *Config) { c.Outputs[0].Match = "audit.***" }, []string{"siem.outputs[0]", "match", "***"}},
		{"empty match part", func(c *Config) { c.Outputs[0].Match = "audit." }, []string{"siem.outputs[0]", "match"}},
		{"cert without key", func(c *Config) { c.Outputs[0].TLS.KeyFile = "" }, []string{"siem.outputs[0]", "tls.cert_file", "tls.key_file"}},
		{"key without cert", func(c *Config) { c.Outputs[0].TLS.CertFile = "" }, []string{"siem.outputs[0]", "tls.cert_file", "tls.key_file"}},
		{"negative batch", func(c *Config) { c.Outputs[0].BatchEvents = -1 }, []string{"siem.outputs[0]", "batch_events"}},
		{"negative window", func(c *Config) { c.Outputs[1].Window = -1 }, []string{"siem.outputs[1]", "window"}},
		{"small spool", func(c *Config) { c.Spool.MaxBytes = 1000 }, []string{"siem.spool.max_bytes"}},
		{"negative spool", func(c *Config) { c.Spool.MaxBytes = -1 }, []string{"siem.spool.max_bytes"}},
		{"negative flush", func(c *Config) { c.Spool.FlushInterval = -time.Second }, []string{"siem.spool.flush_interval"}},
		{"several problems", func(c *Config) { c.Sources[0].Format = "json"; c.Outputs[2].TokenFile = "" },
			[]string{"siem.sources[0]: format", "siem.outputs[2]: token_file"}},
	} {
		c := validConfig()
		tc.mutate(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
}

func TestValidateProblemsOnePerLine(t *testing.T) {
	c := validConfig()
	c.Sources[0].Format = "json"
	c.Outputs[0].Type = "kafka"
	c.Spool.MaxBytes = 5
	err := c.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 3 {
		t.Errorf("%d lines, want one per problem (3): %q", len(lines), err)
	}
}

func TestWithDefaults(t *testing.T) {
	c := Config{
		Sources: []SourceConfig{{Path: "/a", Tag: "a"}, {Path: "/b", Tag: "b", Format: FormatLinuxAudit, MaxLineBytes: 1024}},
		Outputs: []OutputConfig{{Name: "o", Type: OutputSyslog, Address: "h:1"}, {Name: "p", Type: OutputRELP, Address: "h:2", Match: "b", BatchEvents: 5, Window: 7}},
	}
	d := c.WithDefaults()
	if s := d.Sources[0]; s.Format != FormatRaw || s.MaxLineBytes != DefaultMaxLineBytes {
		t.Errorf("source defaults = %+v", s)
	}
	if s := d.Sources[1]; s.Format != FormatLinuxAudit || s.MaxLineBytes != 1024 {
		t.Errorf("set source values changed: %+v", s)
	}
	if o := d.Outputs[0]; o.Match != "**" || o.BatchEvents != DefaultBatchEvents || o.Window != DefaultWindow {
		t.Errorf("output defaults = %+v", o)
	}
	if o := d.Outputs[1]; o.Match != "b" || o.BatchEvents != 5 || o.Window != 7 {
		t.Errorf("set output values changed: %+v", o)
	}
	if d.Spool.MaxBytes != DefaultSpoolBytes || d.Spool.FlushInterval != DefaultFlushInterval || d.Spool.DropOldest {
		t.Errorf("spool defaults = %+v", d.Spool)
	}
	// The original is untouched: WithDefaults copies the slices.
	if c.Sources[0].Format != "" || c.Outputs[0].Match != "" || c.Spool.MaxBytes != 0 {
		t.Errorf("WithDefaults changed its receiver: %+v", c)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	e := Config{Spool: SpoolConfig{MaxBytes: 2 << 20, FlushInterval: time.Second, DropOldest: true}}.WithDefaults()
	if e.Spool.MaxBytes != 2<<20 || e.Spool.FlushInterval != time.Second || !e.Spool.DropOldest {
		t.Errorf("set spool values changed: %+v", e.Spool)
	}
}

const bareYAML = `
sources:
  - path: /var/log/audit/audit.log
    tag: audit
    format: linux-audit
    max_line_bytes: 4096
outputs:
  - name: soc
    type: relp
    address: siem.example.com:2514
    match: "audit.**"
    window: 64
    tls:
      ca_file: /etc/bud/ca.pem
      cert_file: /etc/bud/cert.pem
      key_file: /etc/bud/key.pem
      server_name: siem
spool:
  max_bytes: 2097152
  drop_oldest: true
  flush_interval: 100ms
`

func indent(text string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimPrefix(text, "\n"), "\n") {
		if l != "" {
			b.WriteString("  ")
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestParseYAMLBareAndWrapped(t *testing.T) {
	for name, doc := range map[string]string{"bare": bareYAML, "wrapped": "siem:\n" + indent(bareYAML)} {
		c, err := ParseYAML([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(c.Sources) != 1 || len(c.Outputs) != 1 {
			t.Fatalf("%s: %+v", name, c)
		}
		s, o := c.Sources[0], c.Outputs[0]
		if s.Path != "/var/log/audit/audit.log" || s.Tag != "audit" || s.Format != FormatLinuxAudit || s.MaxLineBytes != 4096 {
			t.Errorf("%s: source %+v", name, s)
		}
		if o.Name != "soc" || o.Type != OutputRELP || o.Address != "siem.example.com:2514" || o.Match != "audit.**" || o.Window != 64 ||
			o.TLS != (TLSConfig{CAFile: "/etc/bud/ca.pem", CertFile: "/etc/bud/cert.pem", KeyFile: "/etc/bud/key.pem", ServerName: "siem"}) {
			t.Errorf("%s: output %+v", name, o)
		}
		if c.Spool != (SpoolConfig{MaxBytes: 2 << 20, DropOldest: true, FlushInterval: 100 * time.Millisecond}) {
			t.Errorf("%s: spool %+v", name, c.Spool)
		}
	}
}

func TestParseYAMLErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"empty", "", []string{"empty"}},
		{"only a comment", "# nothing\n", []string{"empty"}},
		{"no sources and no outputs", "{}\n", []string{"no sources and no outputs"}},
		{"empty lists", "sources: []\noutputs: []\n", []string{"no sources and no outputs"}},
		{"unknown top-level key", "sources: []\noutputs: []\nsinks: []\n", []string{"sinks"}},
		{"unknown source key", "sources:\n  - path: /a\n    tag: a\n    fromat: raw\noutputs:\n  - name: o\n    type: syslog\n    address: h:1\n", []string{"fromat"}},
		{"unknown output key", "sources:\n  - path: /a\n    tag: a\noutputs:\n  - name: o\n    type: syslog\n    address: h:1\n    adress: x\n", []string{"adress"}},
		{"invalid", "sources:\n  - path: a\n    tag: a\noutputs:\n  - name: o\n    type: syslog\n    address: h:1\n", []string{"siem.sources[0]", "absolute"}},
		{"invalid wrapped", "siem:\n  sources:\n    - path: /a\n      tag: a\n", []string{"no outputs"}},
		{"wrong type", "sources: yes\n", []string{"SourceConfig"}},
		{"bad duration", "sources:\n  - path: /a\n    tag: a\noutputs:\n  - name: o\n    type: syslog\n    address: h:1\nspool:\n  flush_interval: soon\n", []string{"soon"}},
		{"not YAML", "sources: [\n", []string{"yaml"}},
	} {
		_, err := ParseYAML([]byte(tc.doc))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
}

// A mistake inside a `siem:`-wrapped document is reported as such, not as
// "field siem not found" from a retry as a bare section.
func TestParseYAMLWrappedErrorNamesTheField(t *testing.T) {
	for doc, want := range map[string]string{
		"siem:\n  sources:\n    - path: /a\n      tag: a\n  outputs:\n    - name: o\n      type: syslog\n      address: h:1\n      adress: x\n": "adress",
		"siem:\n  sources: []\n  bogus: 1\n": "bogus",
		"siem:\n":                            "empty",
		"siem: null\n":                       "empty",
	} {
		_, err := ParseYAML([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "field siem not found") {
			t.Errorf("%q: error %v, want one naming %q", doc, err, want)
		}
	}
}

// `siem: {}` is accepted as an empty configuration while the same section
// bare (`{}`) is refused: pushed by the controller it silently turns
// forwarding off.
func TestParseYAMLWrappedEmptyRefused(t *testing.T) {
	for _, doc := range []string{"siem: {}\n", "siem:\n  spool:\n    drop_oldest: true\n"} {
		if _, err := ParseYAML([]byte(doc)); err == nil {
			t.Errorf("%q accepted", doc)
		}
	}
}

// Match backtracks over every way to split the tag among the "**" parts:
// a valid pattern of 12 "**" parts against a 25-part tag takes seconds, 20
// parts never end. runFile calls Match when a configuration is applied, so a
// pushed configuration can hang the agent's forwarder (and Stop with it).
func TestMatchIsNotExponential(t *testing.T) {
	pattern := strings.Repeat("**.", 20) + "x"
	tag := strings.Repeat("a.", 40) + "y"
	// The pattern must reach Match: a configuration carrying it is valid.
	// (Should Validate ever refuse such patterns, this test needs one it
	// accepts, not a skip.)
	if err := (Config{Sources: []SourceConfig{{Path: "/a", Tag: tag}}, Outputs: []OutputConfig{{Name: "o", Type: OutputSyslog, Address: "h:1", Match: pattern}}}).Validate(); err != nil {
		t.Fatalf("Validate refuses the pattern, so this test no longer shows Match's cost: %v", err)
	}
	done := make(chan bool, 1)
	go func() { done <- Match(pattern, tag) }()
	select {
	case got := <-done:
		if got {
			t.Errorf("Match(%q, %q) = true", pattern, tag)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("Match(%q, %q) did not return within 2s", pattern, tag)
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add([]byte(bareYAML))
	f.Add([]byte("siem:\n" + indent(bareYAML)))
	f.Add([]byte(""))
	f.Add([]byte("siem: {}\n"))
	f.Add([]byte("sources:\n  - path: /a\n    tag: a\noutputs:\n  - name: o\n    type: splunk_hec\n    address: https://s:8088\n    token_file: /t\n"))
	f.Add([]byte("outputs:\n  - {name: o, type: syslog, address: 'h:1', match: '**.x'}\n"))
	f.Add([]byte("sources: [{path: '/a/[b', tag: a}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseYAML(b)
		if err != nil {
			return
		}
		if verr := c.Validate(); verr != nil {
			t.Fatalf("ParseYAML accepted a config that does not validate: %v", verr)
		}
		d := c.WithDefaults()
		if verr := d.Validate(); verr != nil {
			t.Fatalf("defaults broke an accepted config: %v", verr)
		}
		// Match is exponential in the number of ** parts (a known bug,
		// see TestMatchIsNotExponential): only short ones are tried here.
		for _, o := range d.Outputs {
			for _, s := range d.Sources {
				if strings.Count(o.Match, "**") <= 4 && strings.Count(s.Tag, ".") <= 8 {
					Match(o.Match, s.Tag)
				}
			}
		}
	})
}
