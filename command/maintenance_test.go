package command

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMaintenanceTaskParamsRoundTrip(t *testing.T) {
	in := MaintenanceTaskParams{Script: []byte("#!/bin/sh\necho \xff\n"), Timeout: 90 * time.Second, CampaignID: "camp-1", NodeName: "gpu-17.rack2"}
	p := in.Params()
	if p[ParamScript] != base64.StdEncoding.EncodeToString(in.Script) || p[ParamTimeout] != "1m30s" {
		t.Errorf("Params = %v", p)
	}
	out, err := ParseMaintenanceTask(p)
	if err != nil || !reflect.DeepEqual(out, in) {
		t.Errorf("ParseMaintenanceTask(Params) = %+v, %v; want %+v", out, err, in)
	}
	// Only the script is needed: the timeout defaults, the names stay empty.
	out, err = ParseMaintenanceTask(MaintenanceTaskParams{Script: []byte("true")}.Params())
	if err != nil || out.Timeout != DefaultTaskTimeout || out.CampaignID != "" || out.NodeName != "" {
		t.Errorf("script only = %+v, %v", out, err)
	}
	// Exactly the limit is fine.
	if _, err := ParseMaintenanceTask(MaintenanceTaskParams{Script: make([]byte, MaxScriptBytes)}.Params()); err != nil {
		t.Errorf("a %d-byte script: %v", MaxScriptBytes, err)
	}
}

func TestParseMaintenanceTaskRefuses(t *testing.T) {
	script := base64.StdEncoding.EncodeToString([]byte("true"))
	for name, tc := range map[string]struct {
		params map[string]string
		want   string
	}{
		"no script":      {map[string]string{}, `needs parameter "script"`},
		"not base64":     {map[string]string{ParamScript: "echo hi"}, "standard base64"},
		"empty script":   {map[string]string{ParamScript: "===="}, "base64"},
		"too large":      {MaintenanceTaskParams{Script: make([]byte, MaxScriptBytes+1)}.Params(), "256 KiB"},
		"far too large":  {map[string]string{ParamScript: strings.Repeat("A", 2*MaxScriptBytes)}, "256 KiB limit"},
		"bad timeout":    {map[string]string{ParamScript: script, ParamTimeout: "soon"}, "Go duration"},
		"zero timeout":   {map[string]string{ParamScript: script, ParamTimeout: "0s"}, "out of range"},
		"long timeout":   {map[string]string{ParamScript: script, ParamTimeout: "25h"}, "out of range"},
		"bad campaign":   {map[string]string{ParamScript: script, ParamCampaignID: "a b"}, `"campaign_id"`},
		"empty campaign": {map[string]string{ParamScript: script, ParamCampaignID: ""}, `"campaign_id"`},
		"bad node name":  {map[string]string{ParamScript: script, ParamNodeName: "x\n"}, `"node_name"`},
	} {
		if _, err := ParseMaintenanceTask(tc.params); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseMaintenanceTask = %v; want an error with %q", name, err, tc.want)
		}
	}
	if _, err := ParseMaintenanceTask(map[string]string{ParamScript: base64.StdEncoding.EncodeToString(nil) + "AA=="}); err != nil {
		t.Errorf("a one-byte script: %v", err)
	}
}

func TestMaintenanceReboot(t *testing.T) {
	r, err := ParseMaintenanceReboot(MaintenanceRebootParams{CampaignID: "camp-1"}.Params())
	if err != nil || r.CampaignID != "camp-1" {
		t.Errorf("round trip = %+v, %v", r, err)
	}
	if p := (MaintenanceRebootParams{}).Params(); p != nil {
		t.Errorf("no campaign: params %v", p)
	}
	if _, err := ParseMaintenanceReboot(map[string]string{ParamCampaignID: "../x"}); err == nil {
		t.Error("a bad campaign id was accepted")
	}
}

// Validate checks the maintenance kinds' values, not only their names: the
// controller refuses a bad task when it is queued.
func TestValidateMaintenanceKinds(t *testing.T) {
	ok := MaintenanceTaskParams{Script: []byte("echo hi"), Timeout: time.Minute, CampaignID: "c1"}.Params()
	if err := Validate(MaintenanceTask, ok); err != nil {
		t.Errorf("Validate(task) = %v", err)
	}
	if err := Validate(MaintenanceReboot, nil); err != nil {
		t.Errorf("Validate(reboot) = %v", err)
	}
	if err := Validate(MaintenanceReboot, MaintenanceRebootParams{CampaignID: "c1"}.Params()); err != nil {
		t.Errorf("Validate(reboot, campaign) = %v", err)
	}
	for name, tc := range map[string]struct {
		kind   string
		params map[string]string
		want   string
	}{
		"no script":     {MaintenanceTask, nil, `needs parameter "script"`},
		"too large":     {MaintenanceTask, MaintenanceTaskParams{Script: make([]byte, MaxScriptBytes+1)}.Params(), "256 KiB"},
		"bad timeout":   {MaintenanceTask, map[string]string{ParamScript: ok[ParamScript], ParamTimeout: "1 hour"}, "Go duration"},
		"unknown param": {MaintenanceTask, map[string]string{ParamScript: ok[ParamScript], "user": "root"}, `no parameter "user"`},
		"reboot param":  {MaintenanceReboot, map[string]string{"force": "yes"}, `no parameter "force"`},
		"reboot id":     {MaintenanceReboot, map[string]string{ParamCampaignID: "x y"}, "campaign_id"},
	} {
		if err := Validate(tc.kind, tc.params); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v; want an error with %q", name, err, tc.want)
		}
	}
}
