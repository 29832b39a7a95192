package forward

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

func TestCodecRoundTrip(t *testing.T) {
	for _, ev := range []siem.Event{
		{},
		{Tag: "audit", Source: "/var/log/audit/audit.log", Time: time.Unix(1795958082, 876000000), Raw: []byte("type=SYSCALL msg=audit(1795958082.876:8): x\ntype=EOE msg=audit(1795958082.876:8): "),
			Fields: map[string]string{"type": "SYSCALL", "serial": "8", "key": ""}},
		{Tag: "raw", Raw: []byte("bad \xff\x00 utf8"), Truncated: true, Part: 3},
	} {
		b, err := encodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeEvent(b)
		if err != nil {
			t.Fatalf("decode %q: %v", b, err)
		}
		if len(ev.Raw) == 0 {
			ev.Raw = got.Raw[:0:0]
			if got.Raw == nil {
				ev.Raw = nil
			}
		}
		if !got.Time.Equal(ev.Time) || got.Tag != ev.Tag || got.Source != ev.Source || string(got.Raw) != string(ev.Raw) ||
			got.Truncated != ev.Truncated || got.Part != ev.Part || (len(ev.Fields) > 0 && !reflect.DeepEqual(got.Fields, ev.Fields)) {
			t.Errorf("round trip: got %+v, want %+v", got, ev)
		}
	}
	// Entries spooled by earlier builds were JSON.
	old, _ := json.Marshal(siem.Event{Tag: "a", Raw: []byte("x")})
	if ev, err := decodeEvent(old); err != nil || ev.Tag != "a" || string(ev.Raw) != "x" {
		t.Errorf("JSON entry: %+v, %v", ev, err)
	}
}

func FuzzDecodeEvent(f *testing.F) {
	b, _ := encodeEvent(siem.Event{Tag: "t", Raw: []byte("r"), Fields: map[string]string{"k": "v"}})
	f.Add(b)
	f.Add([]byte{codecV1})
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := decodeEvent(b)
		if err != nil || (len(b) > 0 && b[0] == '{') {
			return
		}
		again, err := encodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		if ev2, err := decodeEvent(again); err != nil || string(ev2.Raw) != string(ev.Raw) || ev2.Tag != ev.Tag {
			t.Fatalf("re-encode of a decoded entry does not round-trip: %v", err)
		}
	})
}
