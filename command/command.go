// Package command lists the kinds of command the controller can queue for an
// agent. The controller refuses kinds it does not know and the agent
// registers one handler per kind, so adding a kind is one entry here and one
// handler in the agent.
package command

import (
	"fmt"
	"sort"
	"strings"
)

// Spec describes a command kind.
type Spec struct {
	Description string
	// Params names the parameters the kind accepts and whether each is
	// required.
	Params map[string]bool
	// Check, when set, checks the parameters' values once their names
	// passed.
	Check func(params map[string]string) error
	// Secret names the parameters that carry credentials (a bootstrap
	// token): the operator API shows them redacted (Redact).
	Secret map[string]bool
}

// Kinds known to this build.
var Kinds = map[string]Spec{
	InventoryCollect: {Description: "collect and report the host inventory now"},
	MaintenanceTask: {
		Description: "run a maintenance script with /bin/sh (base64 in param script, at most 256 KiB; timeout default 30m)",
		Params:      map[string]bool{ParamScript: true, ParamTimeout: false, ParamCampaignID: false, ParamNodeName: false},
		Check: func(p map[string]string) error {
			_, err := ParseMaintenanceTask(p)
			return err
		},
	},
	KubeletJoin: kubeletJoinSpec,
	ArtifactFetch: {
		Description: "fetch an artifact from the controller's artifact store into the node's cache, and copy it to path with mode when given",
		Params:      map[string]bool{ParamDigest: true, ParamPath: false, ParamMode: false},
		Check: func(p map[string]string) error {
			_, err := ParseArtifactFetch(p)
			return err
		},
	},
	AgentUpgrade: {
		Description: "install the bud-agent binary of an artifact beside the running one (kept for a rollback), restart, and roll back when the new one does not connect within timeout (default 2m)",
		Params:      map[string]bool{ParamDigest: true, ParamVersion: true, ParamUpgradeTimeout: false, ParamCampaignID: false},
		Check: func(p map[string]string) error {
			_, err := ParseAgentUpgrade(p)
			return err
		},
	},
	MaintenanceReboot: {
		Description: "reboot the node with the agent's maintenance.reboot_command",
		Params:      map[string]bool{ParamCampaignID: false},
		Check: func(p map[string]string) error {
			_, err := ParseMaintenanceReboot(p)
			return err
		},
	},
}

// Kind names.
const (
	InventoryCollect  = "inventory.collect"
	MaintenanceTask   = "maintenance.task"
	MaintenanceReboot = "maintenance.reboot"
	ArtifactFetch     = "artifact.fetch"
	AgentUpgrade      = "agent.upgrade"
)

// Redacted stands in for a secret parameter's value.
const Redacted = "[redacted]"

// Redact returns params with the kind's secret parameters replaced by
// Redacted (params itself when it has none).
func Redact(kind string, params map[string]string) map[string]string {
	spec := Kinds[kind]
	if len(spec.Secret) == 0 {
		return params
	}
	out := make(map[string]string, len(params))
	for k, v := range params {
		if spec.Secret[k] {
			v = Redacted
		}
		out[k] = v
	}
	return out
}

// Validate checks a kind and its parameters.
func Validate(kind string, params map[string]string) error {
	spec, ok := Kinds[kind]
	if !ok {
		return fmt.Errorf("unknown command kind %q (known: %s)", kind, strings.Join(KindNames(), ", "))
	}
	for k := range params {
		if _, ok := spec.Params[k]; !ok {
			return fmt.Errorf("command %s takes no parameter %q", kind, k)
		}
	}
	for k, required := range spec.Params {
		if required && params[k] == "" {
			return fmt.Errorf("command %s needs parameter %q", kind, k)
		}
	}
	if spec.Check != nil {
		return spec.Check(params)
	}
	return nil
}

// KindNames returns the known kinds, sorted.
func KindNames() []string {
	out := make([]string, 0, len(Kinds))
	for k := range Kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
