// Package providers hosts the controller's provider plugins: separate
// processes (plugins/sdk) that make or enroll machines. It reads the
// providers file, starts each plugin when it is first used, pins its binary
// by SHA-256, talks to it over go-plugin's AutoMTLS gRPC with a deadline on
// every call, and restarts it with backoff after it crashes. A plugin that
// crashes or hangs costs its own callers an error, never the controller or
// the other providers.
package providers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults of a provider's timeouts.
const (
	DefaultCallTimeout   = time.Minute
	DefaultCreateTimeout = 20 * time.Minute
)

// Config is one provider of the providers file:
//
//	providers:
//	  - name: vsphere                       # the name budctl uses
//	    path: /usr/lib/budfleet/plugins/bud-provider-vsphere
//	    sha256: 3f1c...                     # of the binary; required
//	    config: {...}                       # handed to the plugin's ValidateConfig
//	    agent_package: https://repo/bud-agent.deb   # optional
//	    call_timeout: 1m                    # optional: every call but create and delete
//	    create_timeout: 20m                 # optional: create and delete
type Config struct {
	Name string `yaml:"name"`
	// Path is the plugin binary; a relative path is relative to the
	// providers file.
	Path   string `yaml:"path"`
	SHA256 string `yaml:"sha256"`
	// Config is the plugin's own config, as it was in the file.
	Config map[string]any `yaml:"config"`
	// AgentPackage is handed to the plugin in every machine's bootstrap.
	AgentPackage  string        `yaml:"agent_package"`
	CallTimeout   time.Duration `yaml:"call_timeout"`
	CreateTimeout time.Duration `yaml:"create_timeout"`
}

type file struct {
	Providers []Config `yaml:"providers"`
}

var nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// LoadFile reads and checks a providers file: unknown keys, a missing or
// unreadable binary and a binary whose SHA-256 is not the pinned one are
// errors that say what to change.
func LoadFile(path string) ([]Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("providers file: %w", err)
	}
	cfgs, err := Parse(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("providers file %s: %w", path, err)
	}
	return cfgs, nil
}

// Parse checks a providers file's content; relative plugin paths are
// resolved against dir.
func Parse(b []byte, dir string) ([]Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f file
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty: list the providers under 'providers:'")
		}
		return nil, fmt.Errorf("%w (a provider takes name, path, sha256, config, agent_package, call_timeout and create_timeout)", err)
	}
	if len(f.Providers) == 0 {
		return nil, errors.New("no providers: list them under 'providers:'")
	}
	seen := map[string]bool{}
	for i := range f.Providers {
		c := &f.Providers[i]
		if err := c.check(dir); err != nil {
			if c.Name != "" {
				return nil, fmt.Errorf("provider %s: %w", c.Name, err)
			}
			return nil, fmt.Errorf("provider %d: %w", i+1, err)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("provider %s is listed twice", c.Name)
		}
		seen[c.Name] = true
	}
	return f.Providers, nil
}

func (c *Config) check(dir string) error {
	switch {
	case c.Name == "":
		return errors.New("name is required")
	case !nameRe.MatchString(c.Name):
		return fmt.Errorf("name %q: use lower-case letters, digits and dashes", c.Name)
	case c.Path == "":
		return errors.New("path is required: the plugin binary")
	case c.SHA256 == "":
		return errors.New("sha256 is required: the SHA-256 of the plugin binary (sha256sum PATH)")
	case c.CallTimeout < 0 || c.CreateTimeout < 0:
		return errors.New("call_timeout and create_timeout must be positive")
	}
	sum, err := hex.DecodeString(c.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("sha256 %q is not 64 hex digits", c.SHA256)
	}
	c.SHA256 = strings.ToLower(c.SHA256)
	if !filepath.IsAbs(c.Path) {
		c.Path = filepath.Join(dir, c.Path)
	}
	if err := checkBinary(c.Path, sum); err != nil {
		return err
	}
	if _, err := c.configJSON(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.CreateTimeout == 0 {
		c.CreateTimeout = DefaultCreateTimeout
	}
	return nil
}

// checkBinary finds a changed binary when the file is read, rather than at
// the plugin's first use; go-plugin's SecureConfig checks again at every
// start.
func checkBinary(path string, want []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("plugin binary %s is not an executable file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		return fmt.Errorf("plugin binary %s has sha256 %x, not the pinned %x: if it was upgraded on purpose, put its new sha256 in the providers file", path, got, want)
	}
	return nil
}

// configJSON is the plugin's config as ValidateConfig takes it.
func (c *Config) configJSON() (json.RawMessage, error) {
	if c.Config == nil {
		return json.RawMessage(`{}`), nil
	}
	return json.Marshal(c.Config)
}
