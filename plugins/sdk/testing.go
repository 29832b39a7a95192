package sdk

import (
	"testing"

	"github.com/hashicorp/go-plugin"
)

// TestProvider serves impl in process over go-plugin's real gRPC transport
// and returns the host's view of it, so a plugin's tests cross the same
// adapters and status codes the controller sees. It closes at t's end.
func TestProvider(t testing.TB, impl Provider) Provider {
	t.Helper()
	c, _ := plugin.TestPluginGRPCConn(t, false, plugin.PluginSet{PluginName: &Plugin{Impl: impl}})
	t.Cleanup(func() { _ = c.Close() })
	raw, err := c.Dispense(PluginName)
	if err != nil {
		t.Fatalf("dispense the provider: %v", err)
	}
	return raw.(Provider)
}
