package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the agent's --config file. Unknown keys are errors; flags
// override it.
type Config struct {
	// Controller and ServerName override what was stored at enrollment,
	// e.g. after the controller moved.
	Controller string `yaml:"controller"`
	ServerName string `yaml:"server_name"`
	// Hostname overrides the reported hostname.
	Hostname  string          `yaml:"hostname"`
	Reconnect ReconnectConfig `yaml:"reconnect"`
	// InventoryInterval is how often the inventory is checked for changes.
	InventoryInterval time.Duration `yaml:"inventory_interval"`
	LogLevel          string        `yaml:"log_level"`
}

// ReconnectConfig bounds the reconnect backoff.
type ReconnectConfig struct {
	Initial time.Duration `yaml:"initial"`
	Max     time.Duration `yaml:"max"`
}

// LoadConfig reads a config file; an empty path gives the defaults.
func LoadConfig(path string) (Config, error) {
	var c Config
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read agent config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("agent config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("agent config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks value ranges.
func (c Config) Validate() error {
	if c.Reconnect.Initial < 0 || c.Reconnect.Max < 0 || c.InventoryInterval < 0 {
		return errors.New("durations must not be negative")
	}
	if c.Reconnect.Initial > 0 && c.Reconnect.Max > 0 && c.Reconnect.Initial > c.Reconnect.Max {
		return fmt.Errorf("reconnect.initial (%s) is longer than reconnect.max (%s)", c.Reconnect.Initial, c.Reconnect.Max)
	}
	if c.InventoryInterval > 0 && c.InventoryInterval < time.Second {
		return fmt.Errorf("inventory_interval %s is under a second", c.InventoryInterval)
	}
	return nil
}
