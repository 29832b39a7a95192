package command

import (
	"fmt"
	"regexp"
	"time"
)

// Parameters of agent.upgrade (with ParamDigest and ParamCampaignID).
const (
	// ParamVersion is the version the new binary reports (its
	// -X .../version.Version): the agent that comes up must report it.
	ParamVersion = "version"
	// ParamUpgradeTimeout is a Go duration: how long the new binary has,
	// from the restart, to connect to the controller before the agent
	// rolls back to the binary it kept; DefaultUpgradeTimeout when absent.
	ParamUpgradeTimeout = "timeout"
)

// Limits of agent.upgrade.
const (
	DefaultUpgradeTimeout = 2 * time.Minute
	MaxUpgradeTimeout     = time.Hour
)

// artifactVersionRe is the artifact store's rule for versions.
var artifactVersionRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// AgentUpgradeParams is an agent.upgrade command's parameters, decoded.
type AgentUpgradeParams struct {
	Digest     string
	Version    string
	Timeout    time.Duration
	CampaignID string
}

// Params encodes u as the command's parameters.
func (u AgentUpgradeParams) Params() map[string]string {
	p := map[string]string{ParamDigest: u.Digest, ParamVersion: u.Version}
	if u.Timeout != 0 {
		p[ParamUpgradeTimeout] = u.Timeout.String()
	}
	if u.CampaignID != "" {
		p[ParamCampaignID] = u.CampaignID
	}
	return p
}

// ParseAgentUpgrade checks an agent.upgrade command's parameters: the
// controller when it is queued, the agent before it installs anything.
func ParseAgentUpgrade(params map[string]string) (AgentUpgradeParams, error) {
	u := AgentUpgradeParams{Digest: params[ParamDigest], Version: params[ParamVersion], Timeout: DefaultUpgradeTimeout, CampaignID: params[ParamCampaignID]}
	if !digestRe.MatchString(u.Digest) {
		return u, fmt.Errorf("agent.upgrade parameter %q must be sha256:<64 lower-case hex digits>: the bud-agent artifact's (see 'budctl artifacts list')", ParamDigest)
	}
	if !artifactVersionRe.MatchString(u.Version) {
		return u, fmt.Errorf("agent.upgrade parameter %q must be the version the new binary reports, 1 to 128 letters, digits, '.', '_', '-' or '+' (got %q)", ParamVersion, u.Version)
	}
	if v, ok := params[ParamUpgradeTimeout]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxUpgradeTimeout {
			return u, fmt.Errorf("agent.upgrade parameter %q must be a duration over 0 and at most %s, e.g. 2m (got %q)", ParamUpgradeTimeout, MaxUpgradeTimeout, v)
		}
		u.Timeout = d
	}
	if u.CampaignID != "" && !nameRe.MatchString(u.CampaignID) {
		return u, fmt.Errorf("agent.upgrade parameter %q: %q is not an id", ParamCampaignID, u.CampaignID)
	}
	return u, nil
}
