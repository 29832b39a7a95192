package sdk

import (
	"context"
	"log/slog"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// PluginName is the name a host dispenses the provider by.
const PluginName = "provider"

// Handshake is what host and plugin must agree on. ProtocolVersion changes
// only with an incompatible change of proto/budfleet/provider/v1; the cookie
// keeps a provider binary run by hand from waiting for a host that is not
// there.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BUDFLEET_PROVIDER_PLUGIN",
	MagicCookieValue: "d1c0f5a8-provider-v1",
}

// Plugin is the go-plugin glue: the plugin side sets Impl, the host side
// leaves it nil and gets a Provider from Dispense.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Provider
}

var _ plugin.GRPCPlugin = (*Plugin)(nil)

// GRPCServer registers the adapter in front of Impl.
func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	providerv1.RegisterProviderServiceServer(s, &server{impl: p.Impl})
	return nil
}

// GRPCClient returns a Provider that calls the plugin; doneCtx ends when the
// plugin process exits, which ends the calls in flight at once.
func (p *Plugin) GRPCClient(doneCtx context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &client{rpc: providerv1.NewProviderServiceClient(c), done: doneCtx}, nil
}

// PluginSet is what a host puts in plugin.ClientConfig.Plugins.
func PluginSet() plugin.PluginSet {
	return plugin.PluginSet{PluginName: &Plugin{}}
}

// Serve runs impl as a plugin until the host stops it. It is the whole of a
// plugin's main.
func Serve(impl Provider) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &Plugin{Impl: impl}},
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Output: os.Stderr, JSONFormat: true, Level: hclog.Info,
		}),
	})
}

// Logger returns a logger for the plugin's own use. Its JSON lines go to
// stderr in the field names go-plugin reads (@message, @level, @timestamp),
// so the host logs them as the plugin's, with their level and attributes.
func Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.MessageKey:
				a.Key = "@message"
			case slog.LevelKey:
				a = slog.String("@level", levelName(a.Value.Any()))
			case slog.TimeKey:
				a = slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
			}
			return a
		},
	}))
}

// levelName maps slog's levels onto hclog's names.
func levelName(v any) string {
	l, _ := v.(slog.Level)
	switch {
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	}
	return "error"
}
