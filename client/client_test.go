package client

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/pki"
)

// testConfig returns a complete config with a real CA and operator
// credential.
func testConfig(t *testing.T, server string) *Config {
	t.Helper()
	now := time.Now()
	authority, err := ca.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := authority.IssueClient(key.Public(), pki.OperatorSubject("alice", pki.RoleAdmin), now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &Config{
		Server:      server,
		CA:          string(pki.EncodeCert(authority.Cert)),
		Certificate: string(pki.EncodeCert(cert)),
		Key:         string(kb),
	}
}

func write(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "budctl.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSaveLoadRoundTrip(t *testing.T) {
	c := testConfig(t, "ctrl.example.com:7443")
	c.ServerName = "ctrl.internal"
	path := filepath.Join(t.TempDir(), "admin.budctl.yaml")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("saved config mode = %o, want 600 (it holds a private key)", fi.Mode().Perm())
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("Load(Save(c)) = %+v, want %+v", got, c)
	}
}

func TestSaveTightensExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "budctl.yaml")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := testConfig(t, "h:1").Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config overwritten with mode %o, want 600", fi.Mode().Perm())
	}
	// No temp files are left beside it.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("dir holds %d entries after Save, want 1", len(ents))
	}
}

func TestLoadUnknownKey(t *testing.T) {
	c := testConfig(t, "h:7443")
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	bad := write(t, string(b)+"sever: typo:7443\n")
	_, err := Load(bad)
	if err == nil {
		t.Fatal("Load accepted an unknown key")
	}
	if !strings.Contains(err.Error(), "sever") {
		t.Errorf("error %q should name the unknown key", err)
	}
}

func TestLoadRequiredFields(t *testing.T) {
	full := testConfig(t, "h:7443")
	for _, field := range []string{"server", "ca", "certificate", "key"} {
		t.Run(field, func(t *testing.T) {
			c := *full
			switch field {
			case "server":
				c.Server = ""
			case "ca":
				c.CA = ""
			case "certificate":
				c.Certificate = ""
			case "key":
				c.Key = ""
			}
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := c.Save(path); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil {
				t.Fatalf("Load accepted a config without %s", field)
			}
			if !strings.Contains(err.Error(), "required") || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q should say what is required and name the file", err)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
	if _, err := Load(write(t, "")); err == nil {
		t.Error("Load of an empty file succeeded")
	}
	if _, err := Load(write(t, "server: [unclosed\n")); err == nil {
		t.Error("Load of malformed YAML succeeded")
	}
}

func TestTLSServerName(t *testing.T) {
	for _, tc := range []struct {
		server, override, want string
	}{
		{"ctrl.example.com:7443", "", "ctrl.example.com"},
		{"10.1.2.3:7443", "", "10.1.2.3"},
		{"[2001:db8::1]:7443", "", "2001:db8::1"},
		{"10.1.2.3:7443", "ctrl.internal", "ctrl.internal"},
	} {
		c := testConfig(t, tc.server)
		c.ServerName = tc.override
		tc2, err := c.TLS()
		if err != nil {
			t.Fatalf("TLS() for %s: %v", tc.server, err)
		}
		if tc2.ServerName != tc.want {
			t.Errorf("server %q override %q: ServerName = %q, want %q", tc.server, tc.override, tc2.ServerName, tc.want)
		}
		if tc2.MinVersion != tls.VersionTLS13 {
			t.Errorf("MinVersion = %x, want TLS 1.3", tc2.MinVersion)
		}
		if len(tc2.Certificates) != 1 {
			t.Errorf("%d client certificates, want 1", len(tc2.Certificates))
		}
		ca, _ := pki.DecodeCert([]byte(c.CA))
		if tc2.RootCAs == nil || !tc2.RootCAs.Equal(pki.Pool(ca)) {
			t.Error("RootCAs should hold exactly the config's CA")
		}
		if tc2.InsecureSkipVerify {
			t.Error("InsecureSkipVerify set")
		}
	}
}

func TestTLSErrors(t *testing.T) {
	good := testConfig(t, "h:7443")
	other := testConfig(t, "h:7443")
	for name, mutate := range map[string]func(*Config){
		"server without port": func(c *Config) { c.Server = "ctrl.example.com" },
		"bad ca":              func(c *Config) { c.CA = "not pem" },
		"bad certificate":     func(c *Config) { c.Certificate = "not pem" },
		"key of another cert": func(c *Config) { c.Key = other.Key },
	} {
		c := *good
		mutate(&c)
		if _, err := c.TLS(); err == nil {
			t.Errorf("%s: TLS() succeeded", name)
		}
		if _, err := Dial(&c); err == nil {
			t.Errorf("%s: Dial succeeded", name)
		}
	}
	if _, err := Dial(nil); err == nil {
		t.Error("Dial(nil) succeeded")
	}
	conn, err := Dial(good)
	if err != nil {
		t.Fatalf("Dial of a good config: %v", err)
	}
	conn.Close()
}
