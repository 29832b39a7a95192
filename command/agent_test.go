package command

import (
	"strings"
	"testing"
	"time"
)

func TestAgentUpgradeParams(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	want := AgentUpgradeParams{Digest: digest, Version: "v1.2.3", Timeout: 90 * time.Second, CampaignID: "c-1"}
	got, err := ParseAgentUpgrade(want.Params())
	if err != nil || got != want {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, want)
	}
	if err := Validate(AgentUpgrade, want.Params()); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if got, _ := ParseAgentUpgrade(map[string]string{ParamDigest: digest, ParamVersion: "v1"}); got.Timeout != DefaultUpgradeTimeout {
		t.Errorf("default timeout = %s", got.Timeout)
	}
	for name, c := range map[string]struct {
		params map[string]string
		want   string
	}{
		"no digest":     {map[string]string{ParamVersion: "v1"}, `needs parameter "digest"`},
		"bad digest":    {map[string]string{ParamDigest: "sha256:xyz", ParamVersion: "v1"}, "sha256:<64"},
		"bad version":   {map[string]string{ParamDigest: digest, ParamVersion: "v 1"}, `"version" must be`},
		"long timeout":  {map[string]string{ParamDigest: digest, ParamVersion: "v1", ParamUpgradeTimeout: "2h"}, "at most 1h0m0s"},
		"zero timeout":  {map[string]string{ParamDigest: digest, ParamVersion: "v1", ParamUpgradeTimeout: "0s"}, "over 0"},
		"unknown param": {map[string]string{ParamDigest: digest, ParamVersion: "v1", "path": "/x"}, `no parameter "path"`},
	} {
		if err := Validate(AgentUpgrade, c.params); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", name, err, c.want)
		}
	}
}
