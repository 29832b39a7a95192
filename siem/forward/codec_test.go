package forward

import (
	"encoding/binary"
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
			Fields: siem.FieldsOf(map[string]string{"type": "SYSCALL", "serial": "8", "key": ""})},
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
	b, _ := encodeEvent(siem.Event{Tag: "t", Raw: []byte("r"), Fields: siem.FieldsOf(map[string]string{"k": "v"})})
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

// TestDecodeEventSortsFields checks that entries written before
// siem.Fields (fields in map order, in binary or JSON) decode with their
// fields sorted, as the formatters expect.
func TestDecodeEventSortsFields(t *testing.T) {
	want := siem.Fields{{Key: "auid", Value: "1000"}, {Key: "serial", Value: "8"}, {Key: "type", Value: "SYSCALL"}}
	b := []byte{codecV1}
	b = binary.AppendVarint(b, 0)
	b = appendStr(b, "audit")
	b = appendStr(b, "f")
	b = appendStr(b, "raw")
	b = append(b, 0)
	b = binary.AppendUvarint(b, 0)
	b = binary.AppendUvarint(b, 3)
	for _, e := range []siem.Field{want[2], want[0], want[1]} {
		b = appendStr(b, e.Key)
		b = appendStr(b, e.Value)
	}
	ev, err := decodeEvent(b)
	if err != nil || !reflect.DeepEqual(ev.Fields, want) {
		t.Errorf("binary entry: fields %q, %v; want %q", ev.Fields, err, want)
	}
	ev, err = decodeEvent([]byte(`{"tag":"audit","raw":"cmF3","fields":{"type":"SYSCALL","auid":"1000","serial":"8"}}`))
	if err != nil || !reflect.DeepEqual(ev.Fields, want) {
		t.Errorf("JSON entry: fields %q, %v; want %q", ev.Fields, err, want)
	}
}
