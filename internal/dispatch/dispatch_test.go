package dispatch

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// A stand-in for a generated oneof: an unexported interface and two
// wrapper types.
type isMsg interface{ isMsg() }

type msgA struct{ n int }
type msgB struct{}
type msgReserved struct{}
type notInOneof struct{}

func (*msgA) isMsg()        {}
func (*msgB) isMsg()        {}
func (*msgReserved) isMsg() {}

type envelope struct{ Msg isMsg }

type sess struct{ got []string }

func opts() Options {
	return Options{
		Who:      "test",
		Oneof:    Oneof[envelope]("Msg"),
		Message:  "Envelope",
		Reserved: map[reflect.Type]string{reflect.TypeFor[*msgReserved](): "the reserved one"},
		Helper:   "On",
	}
}

func TestDispatchRoutesByKind(t *testing.T) {
	errB := errors.New("b failed")
	table, err := New(opts(), []Registration[*sess]{
		{Name: "a", Handlers: []Handler[*sess]{On(func(_ context.Context, s *sess, m *msgA) error {
			s.got = append(s.got, "a")
			if m.n != 7 {
				t.Errorf("handler got n=%d, want 7", m.n)
			}
			return nil
		})}},
		{Name: "b", Handlers: []Handler[*sess]{On(func(context.Context, *sess, *msgB) error { return errB })}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &sess{}
	if ok, err := table.Dispatch(t.Context(), s, &msgA{n: 7}); !ok || err != nil {
		t.Errorf("Dispatch(msgA) = %v, %v", ok, err)
	}
	if ok, err := table.Dispatch(t.Context(), s, &msgB{}); !ok || !errors.Is(err, errB) {
		t.Errorf("Dispatch(msgB) = %v, %v; want the handler's error", ok, err)
	}
	if ok, err := table.Dispatch(t.Context(), s, &msgReserved{}); ok || err != nil {
		t.Errorf("Dispatch(unclaimed) = %v, %v; want not handled", ok, err)
	}
	if ok, _ := table.Dispatch(t.Context(), s, nil); ok {
		t.Error("Dispatch(nil) handled")
	}
	if !table.Handles(&msgA{}) || table.Handles(&msgReserved{}) {
		t.Error("Handles disagrees with the registrations")
	}
	if strings.Join(s.got, ",") != "a" {
		t.Errorf("handlers ran %v", s.got)
	}
}

func TestNewRefusesBadRegistrations(t *testing.T) {
	onA := On(func(context.Context, *sess, *msgA) error { return nil })
	for name, tc := range map[string]struct {
		regs []Registration[*sess]
		want string
	}{
		"module twice":   {[]Registration[*sess]{{Name: "a"}, {Name: "a"}}, `test: module "a" registered twice`},
		"kind twice":     {[]Registration[*sess]{{Name: "a", Handlers: []Handler[*sess]{onA}}, {Name: "b", Handlers: []Handler[*sess]{onA}}}, `handled by both module "a" and module "b"`},
		"zero handler":   {[]Registration[*sess]{{Name: "a", Handlers: []Handler[*sess]{{}}}}, "not made with On"},
		"reserved kind":  {[]Registration[*sess]{{Name: "a", Handlers: []Handler[*sess]{On(func(context.Context, *sess, *msgReserved) error { return nil })}}}, "handles the reserved one, which the session itself takes"},
		"outside oneof":  {[]Registration[*sess]{{Name: "a", Handlers: []Handler[*sess]{On(func(context.Context, *sess, *notInOneof) error { return nil })}}}, "not a Envelope message"},
		"value, not ptr": {[]Registration[*sess]{{Name: "a", Handlers: []Handler[*sess]{On(func(context.Context, *sess, isMsg) error { return nil })}}}, "not a Envelope message"},
	} {
		t.Run(name, func(t *testing.T) {
			table, err := New(opts(), tc.regs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v; want an error containing %q", err, tc.want)
			}
			if table != nil {
				t.Error("New returned a table with its error")
			}
		})
	}
	if _, err := New(Options{}, []Registration[*sess]{{Name: "a"}}); err == nil {
		t.Error("New without a oneof type succeeded")
	}
}

func TestOneofPanicsOnAMissingField(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Oneof of a missing field did not panic")
		}
	}()
	Oneof[envelope]("Nope")
}
