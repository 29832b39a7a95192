// Package systemd carries the project's systemd units, so that the programs
// that install the agent (the bare-metal provider writes the unit over SSH)
// install the file that is verified here (scripts/verify-units.sh) rather
// than a copy.
package systemd

import _ "embed"

// AgentUnit is bud-agent.service.
//
//go:embed bud-agent.service
var AgentUnit []byte

// ControllerUnit is bud-controller.service.
//
//go:embed bud-controller.service
var ControllerUnit []byte
