package sdk_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// The test binary doubles as a plugin: with this variable set it serves a
// mock, so Serve, the handshake and the logger run as a real subprocess.
const servePluginEnv = "BUDFLEET_SDK_TEST_SERVE"

func TestMain(m *testing.M) {
	if os.Getenv(servePluginEnv) != "" {
		log := sdk.Logger()
		sdk.Serve(&sdk.MockProvider{
			InfoF: func(context.Context) (sdk.Info, error) {
				log.Warn("asked for info", "answer", 42)
				return sdk.Info{Name: "subprocess", Version: "0.1"}, nil
			},
		})
		return
	}
	os.Exit(m.Run())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServeAsSubprocess(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	_ = f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), servePluginEnv+"=1")
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginSet(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		SecureConfig:     &plugin.SecureConfig{Checksum: h.Sum(nil), Hash: sha256.New()},
		AutoMTLS:         true,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug}),
	})
	defer c.Kill()
	rpc, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := raw.(sdk.Provider).Info(t.Context())
	if err != nil || info.Name != "subprocess" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	c.Kill()
	// The plugin's slog line arrives as a host log line with its level
	// and attribute, not as raw text.
	if out := logs.String(); !strings.Contains(out, "[WARN]") || !strings.Contains(out, "asked for info") || !strings.Contains(out, "answer=42") {
		t.Fatalf("host log lacks the plugin's warning:\n%s", out)
	}
	// Calls after the plugin exited fail at once, saying so.
	if _, err := raw.(sdk.Provider).Info(t.Context()); !errors.Is(err, sdk.ErrPluginExited) {
		t.Fatalf("a call to a killed plugin: %v, want ErrPluginExited", err)
	}
}
