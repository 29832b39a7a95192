package siem

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAllowlistCheck(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	logs := filepath.Join(dir, "logs")
	for _, d := range []string{state, logs} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A link from an allowed place into the state dir.
	if err := os.Symlink(state, filepath.Join(logs, "sneaky")); err != nil {
		t.Fatal(err)
	}
	allow := Allowlist{SourcePrefixes: []string{logs, "/var/log/audit/"}, Outputs: []string{"*.soc.example:6514", "127.0.0.1:*"}, FilePrefixes: []string{filepath.Join(dir, "secrets")}}
	src := func(p string) Config {
		return Config{Sources: []SourceConfig{{Path: p, Tag: "t"}}, Outputs: []OutputConfig{{Name: "o", Type: OutputSyslog, Address: "a.soc.example:6514"}}}
	}
	out := func(o OutputConfig) Config {
		o.Name = "o"
		return Config{Sources: []SourceConfig{{Path: "/var/log/audit/audit.log", Tag: "t"}}, Outputs: []OutputConfig{o}}
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		a    Allowlist
		want string // "" accepted
	}{
		{"audit log", src("/var/log/audit/audit.log"), allow, ""},
		{"glob in logs", src(filepath.Join(logs, "*.log")), allow, ""},
		{"shadow", src("/etc/shadow"), allow, "outside this node's allowlist"},
		{"dot-dot out of an allowed prefix", src("/var/log/audit/../../../etc/shadow"), allow, "outside"},
		{"prefix without a separator", src("/var/log/auditX/x"), allow, "outside"},
		{"relative", src("audit.log"), allow, "absolute"},
		{"the agent db", src(filepath.Join(state, "agent.db")), Allowlist{SourcePrefixes: []string{"/"}}, "state directory"},
		{"a link into the state dir", src(filepath.Join(logs, "sneaky", "agent.db")), allow, "state directory"},
		{"a glob above the state dir", src(filepath.Join(dir, "*", "agent.db")), Allowlist{SourcePrefixes: []string{"/"}}, "state directory"},
		{"default: audit only", src("/var/log/syslog"), Allowlist{}, "outside"},
		{"default: audit ok", src("/var/log/audit/audit.log"), Allowlist{}, ""},
		{"destination outside", out(OutputConfig{Type: OutputRELP, Address: "evil.example:2514"}), allow, "destination"},
		{"destination inside", out(OutputConfig{Type: OutputRELP, Address: "127.0.0.1:2514"}), allow, ""},
		{"plain http HEC refused by default", out(OutputConfig{Type: OutputSplunkHEC, Address: "http://127.0.0.1:8088/services/collector"}), allow, "allow_plain_http"},
		{"plain http HEC listed but not allowed", out(OutputConfig{Type: OutputSplunkHEC, Address: "http://127.0.0.1:8088"}), Allowlist{Schemes: []string{"http"}}, "allow_plain_http"},
		{"plain http HEC allowed", out(OutputConfig{Type: OutputSplunkHEC, Address: "http://127.0.0.1:8088"}), Allowlist{Schemes: []string{"http"}, AllowPlainHTTP: true}, ""},
		{"https HEC default port", out(OutputConfig{Type: OutputSplunkHEC, Address: "https://hec.soc.example"}), Allowlist{Outputs: []string{"hec.soc.example:443"}}, ""},
		{"token file in the state dir", out(OutputConfig{Type: OutputSplunkHEC, Address: "https://127.0.0.1:8088", TokenFile: filepath.Join(state, "node.key")}), Allowlist{FilePrefixes: []string{"/"}}, "state directory"},
		{"token file outside", out(OutputConfig{Type: OutputSplunkHEC, Address: "https://127.0.0.1:8088", TokenFile: "/etc/shadow"}), allow, "token_file"},
		{"tls key outside", out(OutputConfig{Type: OutputSyslog, Address: "127.0.0.1:6514", TLS: TLSConfig{KeyFile: "/root/.ssh/id_ed25519"}}), allow, "tls.key_file"},
		{"tls file inside", out(OutputConfig{Type: OutputSyslog, Address: "127.0.0.1:6514", TLS: TLSConfig{CAFile: filepath.Join(dir, "secrets", "ca.pem")}}), allow, ""},
	} {
		err := tc.a.Check(tc.cfg, []string{state})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v; want it to say %q", tc.name, err, tc.want)
		}
	}
}

func TestAllowlistValidate(t *testing.T) {
	for _, a := range []Allowlist{
		{SourcePrefixes: []string{"var/log"}},
		{FilePrefixes: []string{"x"}},
		{Outputs: []string{"[bad"}},
		{Schemes: []string{"ftp"}},
	} {
		if a.Validate() == nil {
			t.Errorf("%+v validated", a)
		}
	}
	if err := (Allowlist{}).Validate(); err != nil {
		t.Error(err)
	}
}
