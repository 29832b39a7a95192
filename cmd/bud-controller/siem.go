package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/forward"
)

// ControllerAuditTag tags the controller's own audit events.
const ControllerAuditTag = "budfleet.audit"

func loadControllerSIEM(path string) (siem.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return siem.Config{}, fmt.Errorf("--siem-config: %w", err)
	}
	c, err := siem.ParseYAML(b)
	if err != nil {
		return c, fmt.Errorf("--siem-config %s: %w", path, err)
	}
	return c, nil
}

// forwardAuditLog sends the controller's audit log through the same
// tail -> spool -> output path the agents use. With no sources configured,
// the audit log is the source.
func forwardAuditLog(ctx context.Context, c siem.Config, auditLog, spoolPath string, log *slog.Logger) (func(), error) {
	if len(c.Sources) == 0 {
		c.Sources = []siem.SourceConfig{{Path: auditLog, Tag: ControllerAuditTag, Format: siem.FormatRaw}}
	}
	host, _ := os.Hostname()
	fwd, err := forward.New(forward.Options{
		SpoolPath:     spoolPath,
		SpoolLockHint: "is another bud-controller running with the same --data-dir?",
		Logger:        log,
		Hostname:      host,
		AppName:       "bud-controller",
	})
	if err != nil {
		return nil, err
	}
	if err := fwd.Apply(ctx, c, 0, "local"); err != nil {
		fwd.Close()
		return nil, err
	}
	return func() { fwd.Close() }, nil
}
