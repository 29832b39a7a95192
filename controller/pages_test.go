package controller

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/pki"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func TestPage(t *testing.T) {
	var items []string
	for i := 0; i < 25; i++ {
		items = append(items, fmt.Sprintf("n%02d", i))
	}
	id := func(s string) string { return s }
	conv := func(s string) *fleetv1.Node { return &fleetv1.Node{Id: s} }
	var got []string
	token, pages := "", 0
	for {
		p, next, err := page(items, id, conv, 10, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, n := range p {
			got = append(got, n.GetId())
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 3 || strings.Join(got, ",") != strings.Join(items, ",") {
		t.Fatalf("%d pages: %v", pages, got)
	}
	// Big items: a page stops before 2 MiB, whatever the size asked.
	big := func(s string) *fleetv1.Node { return &fleetv1.Node{Id: s, Hostname: strings.Repeat("h", 900<<10)} }
	p, next, err := page(items, id, big, 1000, "")
	if err != nil || len(p) != 2 || next == "" {
		t.Fatalf("big page: %d items, next %q, %v", len(p), next, err)
	}
	if _, _, err := page(items, id, conv, 10, "!!"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad token: %v", err)
	}
}

// collect follows a list call's pages of two and returns the ids in order;
// a page over two, a repeated id or a bad page token fails the test.
func collect[R interface{ GetNextPageToken() string }](t *testing.T, what string, list func(size uint32, token string) (R, error), ids func(R) []string) []string {
	t.Helper()
	var out []string
	seen := map[string]bool{}
	for token, pages := "", 0; ; pages++ {
		r, err := list(2, token)
		if err != nil {
			t.Fatalf("%s page %d: %v", what, pages, err)
		}
		got := ids(r)
		if len(got) > 2 {
			t.Fatalf("%s: a page of %d with page_size 2", what, len(got))
		}
		for _, id := range got {
			if seen[id] {
				t.Fatalf("%s: %s on two pages", what, id)
			}
			seen[id] = true
		}
		out = append(out, got...)
		if token = r.GetNextPageToken(); token == "" {
			break
		}
	}
	if _, err := list(2, "!!"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%s with a malformed page token: %v, want InvalidArgument", what, err)
	}
	return out
}

// The other list calls page as ListNodes does: page by page, the same
// items as in one call, in the same order.
func TestListCallsPage(t *testing.T) {
	e, admin := newOpEnv(t)
	ctx, err := e.as(admin, fleetv1.FleetService_CreateToken_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := e.api.CreateToken(ctx, &fleetv1.CreateTokenRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"ann", "bea", "cy", "dee"} {
		e.issue(t, admin, n, pki.RoleViewer)
	}
	whole, err := e.api.ListTokens(ctx, &fleetv1.ListTokensRequest{})
	if err != nil || whole.GetNextPageToken() != "" {
		t.Fatal(whole, err)
	}
	var want []string
	for _, tk := range whole.GetTokens() {
		want = append(want, tk.GetId())
	}
	got := collect(t, "ListTokens", func(size uint32, token string) (*fleetv1.ListTokensResponse, error) {
		return e.api.ListTokens(ctx, &fleetv1.ListTokensRequest{PageSize: size, PageToken: token})
	}, func(r *fleetv1.ListTokensResponse) (ids []string) {
		for _, tk := range r.GetTokens() {
			ids = append(ids, tk.GetId())
		}
		return ids
	})
	if len(want) != 5 || !reflect.DeepEqual(got, want) {
		t.Errorf("tokens by pages %v, in one call %v", got, want)
	}

	got = collect(t, "ListOperators", func(size uint32, token string) (*fleetv1.ListOperatorsResponse, error) {
		return e.api.ListOperators(ctx, &fleetv1.ListOperatorsRequest{PageSize: size, PageToken: token})
	}, func(r *fleetv1.ListOperatorsResponse) (ids []string) {
		for _, o := range r.GetOperators() {
			ids = append(ids, o.GetName())
		}
		return ids
	})
	if want := []string{"ann", "bea", "cy", "dee", "root"}; !reflect.DeepEqual(got, want) {
		t.Errorf("operators by pages %v, want %v", got, want)
	}

	g := gpuTestFleet(t)
	api := g.srv.FleetAPI()
	all, err := api.ListGpus(t.Context(), &fleetv1.ListGpusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rowID := func(r *fleetv1.GpuRow) string { return r.GetNodeId() + "/" + r.GetUuid() }
	want = nil
	for _, r := range all.GetGpus() {
		want = append(want, rowID(r))
	}
	got = collect(t, "ListGpus", func(size uint32, token string) (*fleetv1.ListGpusResponse, error) {
		return api.ListGpus(t.Context(), &fleetv1.ListGpusRequest{PageSize: size, PageToken: token})
	}, func(r *fleetv1.ListGpusResponse) (ids []string) {
		for _, row := range r.GetGpus() {
			ids = append(ids, rowID(row))
		}
		return ids
	})
	if len(want) < 10 || !reflect.DeepEqual(got, want) {
		t.Errorf("GPU rows by pages %v, in one call %v", got, want)
	}
}
