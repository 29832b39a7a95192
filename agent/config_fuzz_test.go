package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadConfig: any agent.yaml is either loaded and valid or refused
// with an error; it never panics.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("hostname: n1\nreconnect: {initial: 100ms, max: 1s}\n"))
	f.Add([]byte("siem_allow: {source_prefixes: [/var/log/], outputs: ['*:6514'], schemes: [syslog]}\n"))
	f.Add([]byte("siem:\n  sources:\n    - {path: /var/log/audit/audit.log, tag: audit}\n  outputs:\n    - {name: x, type: relp, address: 127.0.0.1:2514}\n"))
	f.Add([]byte("kubelet: {root: relative}\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(p)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("LoadConfig accepted a config Validate refuses: %v", err)
		}
	})
}
