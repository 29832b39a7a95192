package maintenance

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The store keeps a Campaign as JSON: a campaign caught mid-flight, with
// every kind of field in use, comes back equal.
func TestCampaignJSONRoundTrip(t *testing.T) {
	s := newSim(t, 12, 3)
	s.byName("node-000").taskExit = 1
	s.byName("node-004").drainFails = 1
	spec := fleetSpec()
	spec.MaxUnavailable = 4
	spec.Window, _ = ParseWindow("Mon-Fri 22:00-04:00, Sat 01:00-07:00 Europe/Berlin")
	spec.GracePeriod = 1
	s.start(spec)
	s.audited = 0
	var c Campaign
	for range 14 {
		c = s.step()
	}
	c.CreatedBy, c.Waiting = "alice", "something"
	steps := map[NodeStep]bool{}
	for _, n := range c.Nodes {
		steps[n.Step] = true
	}
	if len(steps) < 4 || c.Failures == 0 || len(c.Outbox) == 0 {
		t.Fatalf("want a campaign mid-flight: steps %v, %d failures, outbox %d", steps, c.Failures, len(c.Outbox))
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back Campaign
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip changed the campaign:\n%+v\n%+v", c, back)
	}
	if back.Spec.Window.String() != spec.Window.String() || !back.Spec.Window.Open(t0) {
		t.Errorf("window %q", back.Spec.Window)
	}
	// And the decoded campaign steps the same.
	obs := s.observe(c)
	a, actsA := Step(c, obs)
	z, actsZ := Step(back, obs)
	if !reflect.DeepEqual(a, z) || !reflect.DeepEqual(actsA, actsZ) {
		t.Error("the decoded campaign steps differently")
	}

	var w Window
	if err := json.Unmarshal([]byte(`"Sat 25:00-06:00"`), &w); err == nil {
		t.Error("a bad window decoded")
	}
}

// Every field of the persisted and exchanged types has a json tag.
func TestEveryFieldHasAJSONTag(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(ty reflect.Type) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || ty.PkgPath() != reflect.TypeFor[Campaign]().PkgPath() || seen[ty] {
			return
		}
		seen[ty] = true
		if ty == reflect.TypeFor[Window]() {
			return // custom JSON: its text
		}
		for i := range ty.NumField() {
			f := ty.Field(i)
			if !f.IsExported() {
				continue
			}
			if tag := f.Tag.Get("json"); tag == "" || tag == "-" {
				t.Errorf("%s.%s has no json tag", ty.Name(), f.Name)
			}
			walk(f.Type)
		}
	}
	for _, v := range []any{Campaign{}, Observations{}, Watch{}, Target{}, Cordon{}, Uncordon{}, Drain{}, EnqueueCommand{}, Audit{}} {
		walk(reflect.TypeOf(v))
	}
	if !seen[reflect.TypeFor[NodeProgress]()] || !seen[reflect.TypeFor[CommandObservation]()] {
		t.Error("walk missed types")
	}
}
