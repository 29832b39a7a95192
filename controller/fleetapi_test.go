package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func TestValidateLabels(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	long64 := strings.Repeat("a", 64)
	prefix253 := strings.Repeat("a", 61) + "." + strings.Repeat("b", 61) + "." + strings.Repeat("c", 61) + "." + strings.Repeat("d", 61) + ".e"
	for _, tc := range []struct {
		labels map[string]string
		ok     bool
	}{
		{nil, true},
		{map[string]string{"env": "prod"}, true},
		{map[string]string{"env": ""}, true},
		{map[string]string{"app.kubernetes.io/name": "bud-agent"}, true},
		{map[string]string{"example.com/rack": "r-12_a.b"}, true},
		{map[string]string{"topology.kubernetes.io/zone": "eu-west-1a"}, true},
		{map[string]string{"a-b.c-d/Key_1.x": "V"}, true},
		{map[string]string{"Env": "Prod"}, true},
		{map[string]string{long63: long63}, true},
		{map[string]string{prefix253 + "/" + long63: "v"}, true},
		{map[string]string{"k": long64}, false},
		{map[string]string{long64: "v"}, false},
		{map[string]string{"": "v"}, false},
		{map[string]string{"env prod": "v"}, false},
		{map[string]string{"env": "a b"}, false},
		{map[string]string{"env": "-lead"}, false},
		{map[string]string{"env": "trail-"}, false},
		{map[string]string{"env": "x/y"}, false},
		{map[string]string{"env": "ü"}, false},
		{map[string]string{"-lead": "v"}, false},
		{map[string]string{"trail_": "v"}, false},
		{map[string]string{"Example.com/x": "v"}, false},
		{map[string]string{"example.com/": "v"}, false},
		{map[string]string{"/x": "v"}, false},
		{map[string]string{"a/b/c": "v"}, false},
		{map[string]string{"ex_ample.com/x": "v"}, false},
		{map[string]string{strings.Repeat("a.", 200) + "a/x": "v"}, false},
		{map[string]string{"env": "ok", "bad key": "v"}, false},
	} {
		err := validateLabels(tc.labels)
		if (err == nil) != tc.ok {
			t.Errorf("validateLabels(%q) = %v, want ok=%v", tc.labels, err, tc.ok)
		}
	}
}

func tokenCount(t *testing.T, e *testEnv) int {
	t.Helper()
	ts, err := e.store.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(ts)
}

func TestCreateTokenDefaults(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	resp, err := api.CreateToken(context.Background(), &fleetv1.CreateTokenRequest{
		Labels: map[string]string{"env": "prod"}, MaxUses: 3, Description: "rack 12",
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := resp.GetToken()
	if got := tok.GetExpiresAt().AsTime().Sub(tok.GetCreatedAt().AsTime()); got != DefaultTokenTTL || DefaultTokenTTL != 24*time.Hour {
		t.Errorf("default token lifetime = %s, want 24h", got)
	}
	if !tok.GetCreatedAt().AsTime().Equal(base) {
		t.Errorf("created at %s, want the clock's %s", tok.GetCreatedAt().AsTime(), base)
	}
	if tok.GetMaxUses() != 3 || tok.GetUses() != 0 || tok.GetLabels()["env"] != "prod" || tok.GetDescription() != "rack 12" || tok.GetRevoked() {
		t.Errorf("token = %v", tok)
	}
	jt, err := pki.ParseJoinToken(resp.GetJoinToken())
	if err != nil {
		t.Fatalf("join token %q: %v", resp.GetJoinToken(), err)
	}
	if jt.ID != tok.GetId() || jt.CAHash != pki.PublicKeyHash(e.ca.Cert) {
		t.Errorf("join token %+v does not match token %s and the CA", jt, tok.GetId())
	}
	stored, err := e.store.GetToken(t.Context(), tok.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if !ca.SecretMatches(jt.Secret, stored.SecretHash) || strings.Contains(stored.SecretHash, jt.Secret) {
		t.Error("the store should hold the secret's hash, not the secret")
	}

	// An explicit TTL, up to the maximum, is used.
	resp, err = api.CreateToken(context.Background(), &fleetv1.CreateTokenRequest{Ttl: durationpb.New(MaxTokenTTL)})
	if err != nil {
		t.Fatalf("ttl of exactly the maximum: %v", err)
	}
	if got := resp.GetToken().GetExpiresAt().AsTime(); !got.Equal(base.Add(MaxTokenTTL)) {
		t.Errorf("expires %s, want %s", got, base.Add(MaxTokenTTL))
	}
	if n := tokenCount(t, e); n != 2 {
		t.Errorf("%d tokens stored, want 2", n)
	}
}

func TestCreateTokenRejects(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	if _, err := api.CreateToken(context.Background(), &fleetv1.CreateTokenRequest{}); err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]*fleetv1.CreateTokenRequest{
		"ttl over a year":      {Ttl: durationpb.New(MaxTokenTTL + time.Second)},
		"ttl ten years":        {Ttl: durationpb.New(10 * 365 * 24 * time.Hour)},
		"negative ttl":         {Ttl: durationpb.New(-time.Hour)},
		"zero ttl":             {Ttl: durationpb.New(0)},
		"invalid ttl":          {Ttl: &durationpb.Duration{Seconds: 1, Nanos: -1}},
		"bad label key":        {Labels: map[string]string{"bad key": "v"}},
		"bad label value":      {Labels: map[string]string{"env": "has space"}},
		"long label value":     {Labels: map[string]string{"env": strings.Repeat("v", 64)}},
		"description too long": {Description: strings.Repeat("d", 257)},
	} {
		_, err := api.CreateToken(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
		if n := tokenCount(t, e); n != 1 {
			t.Fatalf("%s: %d tokens stored after a rejection, want 1", name, n)
		}
	}
}

func TestRevokeToken(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	for _, id := range []string{"", "xyz", "0123456789AB", "0123456789abc", "../../etc"} {
		if _, err := api.RevokeToken(context.Background(), &fleetv1.RevokeTokenRequest{Id: id}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("RevokeToken(%q) = %v, want InvalidArgument", id, err)
		}
	}
	if _, err := api.RevokeToken(context.Background(), &fleetv1.RevokeTokenRequest{Id: "0123456789ab"}); status.Code(err) != codes.NotFound {
		t.Errorf("RevokeToken(unknown) = %v, want NotFound", err)
	}
	resp, err := api.CreateToken(context.Background(), &fleetv1.CreateTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetToken().GetId()
	e.clock.Advance(time.Minute)
	r, err := api.RevokeToken(context.Background(), &fleetv1.RevokeTokenRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GetToken().GetRevoked() || !r.GetToken().GetRevokedAt().AsTime().Equal(base.Add(time.Minute)) {
		t.Errorf("revoked token = %v", r.GetToken())
	}
	// Revoking again keeps the first time.
	e.clock.Advance(time.Minute)
	r, err = api.RevokeToken(context.Background(), &fleetv1.RevokeTokenRequest{Id: id})
	if err != nil || !r.GetToken().GetRevokedAt().AsTime().Equal(base.Add(time.Minute)) {
		t.Errorf("second revoke: %v %v", r.GetToken(), err)
	}
	l, err := api.ListTokens(context.Background(), &fleetv1.ListTokensRequest{})
	if err != nil || len(l.GetTokens()) != 1 || !l.GetTokens()[0].GetRevoked() {
		t.Errorf("ListTokens = %v, %v", l, err)
	}
}

// addNode stores a node directly.
func addNode(t *testing.T, e *testEnv, id string) {
	t.Helper()
	tok := store.Token{ID: "aaaaaaaaaaaa", SecretHash: ca.HashSecret("s"), CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
	if _, err := e.store.GetToken(t.Context(), tok.ID); err != nil {
		if err := e.store.CreateToken(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.store.Enroll(t.Context(), tok.ID, func(store.Token) error { return nil }, store.Node{ID: id, Hostname: "h-" + id, TokenID: tok.ID, EnrolledAt: base}); err != nil {
		t.Fatal(err)
	}
}

func TestCreateCommand(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	addNode(t, e, "n1")
	count := func() int {
		t.Helper()
		cs, err := e.store.ListCommands(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		return len(cs)
	}

	for name, tc := range map[string]struct {
		req  *fleetv1.CreateCommandRequest
		code codes.Code
	}{
		"unknown kind":    {&fleetv1.CreateCommandRequest{NodeId: "n1", Kind: "shell.exec"}, codes.InvalidArgument},
		"empty kind":      {&fleetv1.CreateCommandRequest{NodeId: "n1"}, codes.InvalidArgument},
		"unknown param":   {&fleetv1.CreateCommandRequest{NodeId: "n1", Kind: command.InventoryCollect, Params: map[string]string{"x": "y"}}, codes.InvalidArgument},
		"no node":         {&fleetv1.CreateCommandRequest{Kind: command.InventoryCollect}, codes.InvalidArgument},
		"unknown node":    {&fleetv1.CreateCommandRequest{NodeId: "n2", Kind: command.InventoryCollect}, codes.NotFound},
		"unknown kind n2": {&fleetv1.CreateCommandRequest{NodeId: "n2", Kind: "nope"}, codes.InvalidArgument},
	} {
		_, err := api.CreateCommand(context.Background(), tc.req)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", name, err, tc.code)
		}
		if n := count(); n != 0 {
			t.Fatalf("%s: %d commands queued after a rejection", name, n)
		}
	}
	_, err := api.CreateCommand(context.Background(), &fleetv1.CreateCommandRequest{NodeId: "n1", Kind: "shell.exec"})
	if st, _ := status.FromError(err); !strings.Contains(st.Message(), "shell.exec") {
		t.Errorf("unknown kind message %q should name the kind", st.Message())
	}

	resp, err := api.CreateCommand(context.Background(), &fleetv1.CreateCommandRequest{NodeId: "n1", Kind: command.InventoryCollect})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.GetCommand()
	if c.GetId() == "" || c.GetNodeId() != "n1" || c.GetState() != fleetv1.CommandState_COMMAND_STATE_PENDING || c.GetDeliveries() != 0 || !c.GetCreatedAt().AsTime().Equal(base) {
		t.Errorf("queued command = %v", c)
	}
	got, err := api.GetCommand(context.Background(), &fleetv1.GetCommandRequest{Id: c.GetId()})
	if err != nil || got.GetCommand().GetKind() != command.InventoryCollect {
		t.Errorf("GetCommand = %v, %v", got, err)
	}
	if _, err := api.GetCommand(context.Background(), &fleetv1.GetCommandRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetCommand(unknown) = %v, want NotFound", err)
	}
	if _, err := api.GetCommand(context.Background(), &fleetv1.GetCommandRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetCommand(\"\") = %v, want InvalidArgument", err)
	}
	l, err := api.ListCommands(context.Background(), &fleetv1.ListCommandsRequest{NodeId: "n1"})
	if err != nil || len(l.GetCommands()) != 1 {
		t.Errorf("ListCommands = %v, %v", l, err)
	}
}

func TestDeleteNode(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	if _, err := api.DeleteNode(context.Background(), &fleetv1.DeleteNodeRequest{Id: "missing"}); status.Code(err) != codes.NotFound {
		t.Errorf("DeleteNode(unknown) = %v, want NotFound", err)
	}
	if _, err := api.DeleteNode(context.Background(), &fleetv1.DeleteNodeRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("DeleteNode(\"\") = %v, want InvalidArgument", err)
	}
	addNode(t, e, "n1")
	addNode(t, e, "n2")
	if _, err := api.CreateCommand(context.Background(), &fleetv1.CreateCommandRequest{NodeId: "n1", Kind: command.InventoryCollect}); err != nil {
		t.Fatal(err)
	}
	e.srv.sawHeartbeat("n1")
	if _, err := api.DeleteNode(context.Background(), &fleetv1.DeleteNodeRequest{Id: "n1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.GetNode(context.Background(), &fleetv1.GetNodeRequest{Id: "n1"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetNode after delete = %v, want NotFound", err)
	}
	if last, _ := e.srv.nodeLiveness("n1"); !last.IsZero() {
		t.Error("liveness of a deleted node kept")
	}
	if cs, _ := e.store.ListCommands(t.Context(), "n1"); len(cs) != 0 {
		t.Errorf("%d commands of a deleted node kept", len(cs))
	}
	l, err := api.ListNodes(context.Background(), &fleetv1.ListNodesRequest{})
	if err != nil || len(l.GetNodes()) != 1 || l.GetNodes()[0].GetId() != "n2" {
		t.Errorf("ListNodes after delete = %v, %v", l, err)
	}
}

func TestGetNodeStatus(t *testing.T) {
	e := newTestServer(t)
	api := e.srv.FleetAPI()
	addNode(t, e, "n1")
	get := func() *fleetv1.Node {
		t.Helper()
		r, err := api.GetNode(context.Background(), &fleetv1.GetNodeRequest{Id: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetNode()
	}
	if n := get(); n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_NOT_READY || n.GetConnected() || n.GetLastHeartbeat() != nil {
		t.Errorf("never-seen node = %v", n)
	}
	e.srv.sawHeartbeat("n1")
	if n := get(); n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY || !n.GetLastHeartbeat().AsTime().Equal(base) {
		t.Errorf("node with a fresh heartbeat = %v", n)
	}
	e.clock.Advance(DefaultHeartbeatGrace + time.Second)
	if n := get(); n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_NOT_READY {
		t.Errorf("node past the grace = %v", n)
	}
	if _, err := api.GetNode(context.Background(), &fleetv1.GetNodeRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetNode(\"\") = %v", err)
	}
}

// Kubernetes limits a label key's prefix to 253 characters and its name to
// 63. validateLabels checks only the whole key against 316, so a 283
// character prefix with a 1 character name passes here and is refused by
// the API server when the labels reach the node's Kubernetes object.
func TestValidateLabelsPrefixLength(t *testing.T) {
	prefix := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + "." + strings.Repeat("e", 40)
	if err := validateLabels(map[string]string{prefix + "/x": "v"}); err == nil {
		t.Errorf("a label key with a %d character prefix was accepted", len(prefix))
	}
}
