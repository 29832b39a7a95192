package siem

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestFields(t *testing.T) {
	m := map[string]string{"type": "SYSCALL", "comm": `a"<b>&`, "AUID": "unset", "": "empty", "k\xff": "v\xfe"}
	f := FieldsOf(m)
	if !f.Sorted() || len(f) != len(m) {
		t.Fatalf("FieldsOf = %q, not sorted or not all there", f)
	}
	if !reflect.DeepEqual(f.Map(), m) {
		t.Errorf("Map = %q, want %q", f.Map(), m)
	}
	for k, v := range m {
		if got, ok := f.Lookup(k); !ok || got != v {
			t.Errorf("Lookup(%q) = %q, %v", k, got, ok)
		}
	}
	if _, ok := f.Lookup("nope"); ok || f.Get("nope") != "" {
		t.Errorf("Lookup of a missing key found it")
	}
	// The JSON is a map's, so an Event's JSON (HEC, old spool entries) is
	// unchanged.
	got, err := json.Marshal(f)
	want, _ := json.Marshal(m)
	if err != nil || string(got) != string(want) {
		t.Errorf("MarshalJSON = %s, %v; want %s", got, err, want)
	}
	var back Fields
	var backMap map[string]string // JSON makes invalid UTF-8 valid in both
	json.Unmarshal(want, &backMap)
	if err := json.Unmarshal(got, &back); err != nil || !reflect.DeepEqual(back, FieldsOf(backMap)) {
		t.Errorf("UnmarshalJSON = %q, %v; want %q", back, err, FieldsOf(backMap))
	}
	ev, _ := json.Marshal(Event{Tag: "t"})
	if string(ev) != `{"tag":"t","source":"","time":"0001-01-01T00:00:00Z","raw":null}` {
		t.Errorf("event without fields: %s", ev)
	}
}

func TestFieldsNormalize(t *testing.T) {
	in := Fields{{"b", "1"}, {"a", "2"}, {"b", "3"}, {"a", "4"}}
	keep := append(Fields(nil), in...)
	got := in.Normalize()
	want := Fields{{"a", "2"}, {"b", "1"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Normalize = %q, want %q", got, want)
	}
	if !reflect.DeepEqual(in, keep) {
		t.Errorf("Normalize modified its input: %q", in)
	}
	if s := (Fields{{"a", "1"}, {"b", "2"}}); &s.Normalize()[0] != &s[0] {
		t.Errorf("Normalize copied sorted fields")
	}
	var big Fields
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		big = append(big, Field{k, k + k})
	}
	if big.Get("i") != "ii" || big.Get("a") != "aa" || big.Get("z") != "" {
		t.Errorf("Lookup in a long Fields")
	}
}
