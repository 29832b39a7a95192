// Package cli holds what the three mains share: logging set-up and the
// signal-aware run wrapper.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// NewLogger returns a slog logger writing to w in format "json" or "text".
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

// Main runs root with a context cancelled by SIGINT or SIGTERM and exits
// non-zero with the error on stderr.
func Main(root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root.SilenceUsage = true
	root.SilenceErrors = true
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", root.Name(), err)
		code := 1
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			code = ec.ExitCode()
		}
		stop()
		os.Exit(code)
	}
}

// LogFlags adds --log-format and --log-level to cmd.
func LogFlags(cmd *cobra.Command, format, level *string) {
	cmd.PersistentFlags().StringVar(format, "log-format", "json", "log format: json or text")
	cmd.PersistentFlags().StringVar(level, "log-level", "info", "log level: debug, info, warn or error")
}
