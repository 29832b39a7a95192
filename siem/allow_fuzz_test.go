package siem

import "testing"

// FuzzPushedConfig: whatever a controller pushes is parsed or refused, and
// a configuration the default allowlist accepts reads nothing outside
// /var/log/audit/ and nothing under the state directory.
func FuzzPushedConfig(f *testing.F) {
	f.Add([]byte("siem:\n  sources:\n    - {path: /var/log/audit/audit.log, tag: audit}\n  outputs:\n    - {name: x, type: relp, address: 127.0.0.1:2514}\n"))
	f.Add([]byte("sources:\n  - {path: /var/log/audit/../../../var/lib/bud-agent/agent.db, tag: a}\noutputs:\n  - {name: x, type: splunk_hec, address: 'http://h:1/', token_file: /etc/shadow}\n"))
	f.Add([]byte("sources:\n  - {path: '/var/log/audit/*', tag: a}\noutputs:\n  - {name: x, type: syslog, address: 'h:6514'}\n"))
	state := "/var/log/audit/state"
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseYAML(b)
		if err != nil {
			return
		}
		if err := (Allowlist{}).Check(c, []string{state}); err != nil {
			return
		}
		for _, s := range c.Sources {
			clean, _ := fixedPart(cleanPath(s.Path))
			if !under(clean, "/var/log/audit") || under(clean, state) {
				t.Fatalf("default allowlist accepted source %q", s.Path)
			}
		}
		for _, o := range c.Outputs {
			if o.TokenFile != "" || o.TLS.KeyFile != "" {
				if !under(cleanPath(o.TokenFile+o.TLS.KeyFile), "/etc/budfleet/siem") {
					t.Fatalf("default allowlist accepted files of %+v", o)
				}
			}
		}
	})
}
