package command

import (
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Parameters of maintenance.task and maintenance.reboot.
const (
	// ParamScript is the task's script, base64 (standard encoding, with
	// padding): command parameters are protobuf strings, which must be
	// UTF-8, and a script need not be.
	ParamScript = "script"
	// ParamTimeout is a Go duration (e.g. "30m"); DefaultTaskTimeout when
	// absent.
	ParamTimeout = "timeout"
	// ParamCampaignID is the campaign that queued the command, in the
	// task's environment as BUD_CAMPAIGN_ID; empty for a task an operator
	// queued by hand.
	ParamCampaignID = "campaign_id"
	// ParamNodeName is the node's name in BUD_NODE_NAME (its Kubernetes
	// Node, when that differs from the hostname); the agent's hostname when
	// absent.
	ParamNodeName = "node_name"
)

// Limits of maintenance.task.
const (
	// MaxScriptBytes is the largest task script (decoded). A larger payload
	// belongs in a file the script fetches.
	MaxScriptBytes = 256 << 10
	// DefaultTaskTimeout applies when a task names no timeout.
	DefaultTaskTimeout = 30 * time.Minute
	// MaxTaskTimeout is the longest timeout a task may ask for.
	MaxTaskTimeout = 24 * time.Hour
)

// maxScriptParam is the longest base64 text of a MaxScriptBytes script.
var maxScriptParam = base64.StdEncoding.EncodedLen(MaxScriptBytes)

// nameRe bounds the ids and names that reach a task's environment and the
// agent's log.
var nameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._:-]{0,251}[A-Za-z0-9])?$`)

// MaintenanceTaskParams is a maintenance.task command's parameters, decoded.
type MaintenanceTaskParams struct {
	Script     []byte
	Timeout    time.Duration
	CampaignID string
	NodeName   string
}

// Params encodes t as the command's parameters: what the controller
// queues. It does not check t; Validate (or ParseMaintenanceTask) does.
func (t MaintenanceTaskParams) Params() map[string]string {
	p := map[string]string{ParamScript: base64.StdEncoding.EncodeToString(t.Script)}
	if t.Timeout != 0 {
		p[ParamTimeout] = t.Timeout.String()
	}
	if t.CampaignID != "" {
		p[ParamCampaignID] = t.CampaignID
	}
	if t.NodeName != "" {
		p[ParamNodeName] = t.NodeName
	}
	return p
}

// ParseMaintenanceTask decodes and checks a maintenance.task command's
// parameters: the controller refuses a bad one when it is queued, and the
// agent checks again before it runs anything.
func ParseMaintenanceTask(params map[string]string) (MaintenanceTaskParams, error) {
	var t MaintenanceTaskParams
	s := params[ParamScript]
	if s == "" {
		return t, errors.New(`maintenance.task needs parameter "script": the script, base64-encoded`)
	}
	if len(s) > maxScriptParam {
		return t, fmt.Errorf("maintenance.task script is over the %d KiB limit (%d bytes of base64); fetch larger payloads from the script", MaxScriptBytes>>10, len(s))
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return t, fmt.Errorf("maintenance.task parameter %q must be the script in standard base64: %w", ParamScript, err)
	}
	if len(b) > MaxScriptBytes {
		return t, fmt.Errorf("maintenance.task script is %d bytes; the limit is %d (256 KiB); fetch larger payloads from the script", len(b), MaxScriptBytes)
	}
	if len(b) == 0 {
		return t, errors.New("maintenance.task script is empty")
	}
	t.Script = b
	t.Timeout = DefaultTaskTimeout
	if v, ok := params[ParamTimeout]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return t, fmt.Errorf("maintenance.task parameter %q: %w (use a Go duration such as 30m)", ParamTimeout, err)
		}
		if d <= 0 || d > MaxTaskTimeout {
			return t, fmt.Errorf("maintenance.task timeout %s is out of range: more than 0 and at most %s", d, MaxTaskTimeout)
		}
		t.Timeout = d
	}
	for _, f := range []struct {
		key string
		to  *string
	}{{ParamCampaignID, &t.CampaignID}, {ParamNodeName, &t.NodeName}} {
		v, ok := params[f.key]
		if !ok {
			continue
		}
		if !nameRe.MatchString(v) {
			return t, fmt.Errorf("maintenance.task parameter %q must be 1 to 253 letters, digits, '.', '_', ':' or '-'", f.key)
		}
		*f.to = v
	}
	return t, nil
}

// MaintenanceRebootParams is a maintenance.reboot command's parameters.
type MaintenanceRebootParams struct {
	CampaignID string
}

// Params encodes r as the command's parameters.
func (r MaintenanceRebootParams) Params() map[string]string {
	if r.CampaignID == "" {
		return nil
	}
	return map[string]string{ParamCampaignID: r.CampaignID}
}

// ParseMaintenanceReboot checks a maintenance.reboot command's parameters.
func ParseMaintenanceReboot(params map[string]string) (MaintenanceRebootParams, error) {
	var r MaintenanceRebootParams
	if v, ok := params[ParamCampaignID]; ok {
		if !nameRe.MatchString(v) {
			return r, fmt.Errorf("maintenance.reboot parameter %q must be 1 to 253 letters, digits, '.', '_', ':' or '-'", ParamCampaignID)
		}
		r.CampaignID = v
	}
	return r, nil
}
