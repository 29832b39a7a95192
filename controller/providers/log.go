package providers

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sort"

	"github.com/hashicorp/go-hclog"
)

// newHCLogger gives go-plugin (which logs through hclog, its own lines and
// the plugin's) a logger that writes into the controller's slog logger:
// hclog writes JSON lines, and slogWriter turns each into a record with its
// level, message and attributes.
func newHCLogger(ctx context.Context, log *slog.Logger) hclog.Logger {
	level := hclog.Info
	if log.Enabled(ctx, slog.LevelDebug) {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{
		Output:     slogWriter{log},
		JSONFormat: true,
		Level:      level,
	})
}

type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	for line := range bytes.SplitSeq(bytes.TrimSpace(b), []byte("\n")) {
		var entry map[string]any
		if err := json.Unmarshal(line, &entry); err != nil {
			w.log.Info(string(line))
			continue
		}
		msg, _ := entry["@message"].(string)
		lvl, _ := entry["@level"].(string)
		keys := make([]string, 0, len(entry))
		for k := range entry {
			if k != "@message" && k != "@level" && k != "@timestamp" {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		attrs := make([]any, 0, 2*len(keys))
		for _, k := range keys {
			name := k
			if k == "@module" {
				name = "plugin_logger"
			}
			attrs = append(attrs, name, entry[k])
		}
		switch lvl {
		case "trace", "debug":
			w.log.Debug(msg, attrs...)
		case "warn":
			w.log.Warn(msg, attrs...)
		case "error":
			w.log.Error(msg, attrs...)
		default:
			w.log.Info(msg, attrs...)
		}
	}
	return len(b), nil
}
