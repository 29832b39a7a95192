package main

import (
	"bytes"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

func TestPrintKubeletJoin(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	printKubeletJoin(tw, &kubev1.KubeletJoin{CommandId: "c1", Cluster: "dc1", NodeName: "gpu-1", Phase: "failed", Reason: "installing: no kubelet at /usr/local/bin/kubelet", UpdatedAt: timestamppb.New(now.Add(-5 * time.Second))}, now)
	printKubeletJoin(tw, nil, now)
	_ = tw.Flush()
	out := spaces.ReplaceAllString(b.String(), " ")
	if want := "Kubelet join: failed: installing: no kubelet at /usr/local/bin/kubelet (cluster dc1, Node gpu-1, command c1, updated 5s ago)\n"; out != want {
		t.Errorf("got %q\nwant %q", out, want)
	}
}

// join-cluster refuses what it can tell is wrong before it calls the
// controller.
func TestJoinClusterFlags(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		saying string
	}{
		{[]string{"nodes", "join-cluster", "n1"}, "--cluster NAME is required"},
		{[]string{"nodes", "join-cluster", "n1", "--cluster", "dc1", "--label", "novalue"}, `label "novalue": want key=value`},
		{[]string{"nodes", "join-cluster"}, "accepts 1 arg"},
	} {
		root := newRoot()
		root.SetArgs(tc.args)
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.saying) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.saying)
		}
	}
}
