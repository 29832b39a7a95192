package controller

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// AuditLogFile is the controller's own audit trail in the data dir: one JSON
// object per operator action. It is forwarded to the SIEM by the same code
// the agents use when the controller runs with --siem-config.
const AuditLogFile = "audit.log"

// AuditLog appends operator actions to a file, synced per entry: actions
// are rare and each must survive a crash.
type AuditLog struct {
	mu sync.Mutex
	f  *os.File
}

// OpenAuditLog opens (creating) the audit log at path.
func OpenAuditLog(path string) (*AuditLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &AuditLog{f: f}, nil
}

// Record appends one action.
func (l *AuditLog) Record(at time.Time, action, operator string, attrs map[string]any) error {
	entry := map[string]any{"time": at.UTC().Format(time.RFC3339Nano), "action": action, "operator": operator}
	for k, v := range attrs {
		entry[k] = v
	}
	b, err := json.Marshal(entry)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return err
	}
	return l.f.Sync()
}

// Close closes the file.
func (l *AuditLog) Close() error { return l.f.Close() }
