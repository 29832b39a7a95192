package siem

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// Field is one structured value of an event.
type Field struct {
	Key, Value string
}

// Fields are an event's structured values, sorted by Key (byte order), each
// Key once. A slice rather than a map: making a map per event and sorting
// its keys again for every message was most of the linux-audit
// forwarder's CPU, while the parser can emit the fields in order.
// FieldsOf makes them from a map; Normalize repairs a slice built by hand.
type Fields []Field

// FieldsOf returns m as Fields; nil for an empty m.
func FieldsOf(m map[string]string) Fields {
	if len(m) == 0 {
		return nil
	}
	f := make(Fields, 0, len(m))
	for k, v := range m {
		f = append(f, Field{k, v})
	}
	slices.SortFunc(f, func(a, b Field) int { return strings.Compare(a.Key, b.Key) })
	return f
}

// Sorted reports whether f is sorted by Key with no Key twice.
func (f Fields) Sorted() bool {
	for i := 1; i < len(f); i++ {
		if f[i-1].Key >= f[i].Key {
			return false
		}
	}
	return true
}

// Normalize returns f sorted by Key, the first of repeated Keys kept; f
// itself when it is already (else a copy: f is not modified).
func (f Fields) Normalize() Fields {
	if f.Sorted() {
		return f
	}
	g := slices.Clone(f)
	slices.SortStableFunc(g, func(a, b Field) int { return strings.Compare(a.Key, b.Key) })
	return slices.CompactFunc(g, func(a, b Field) bool { return a.Key == b.Key })
}

// Lookup returns the value of key k.
func (f Fields) Lookup(k string) (string, bool) {
	if len(f) > 8 {
		i, ok := slices.BinarySearchFunc(f, k, func(e Field, k string) int { return strings.Compare(e.Key, k) })
		if ok {
			return f[i].Value, true
		}
		return "", false
	}
	for _, e := range f {
		if e.Key == k {
			return e.Value, true
		}
	}
	return "", false
}

// Get returns the value of key k, "" when there is none.
func (f Fields) Get(k string) string {
	v, _ := f.Lookup(k)
	return v
}

// Map returns f as a map; nil for empty f.
func (f Fields) Map() map[string]string {
	if len(f) == 0 {
		return nil
	}
	m := make(map[string]string, len(f))
	for _, e := range f {
		if _, dup := m[e.Key]; !dup {
			m[e.Key] = e.Value
		}
	}
	return m
}

// MarshalJSON writes f as a JSON object, as a map[string]string is
// written (keys sorted), so the JSON form of an Event is unchanged.
func (f Fields) MarshalJSON() ([]byte, error) {
	if f == nil {
		return []byte("null"), nil
	}
	f = f.Normalize()
	var b bytes.Buffer
	b.WriteByte('{')
	for i, e := range f {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(e.Key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(e.Value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads a JSON object of strings (or null).
func (f *Fields) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*f = FieldsOf(m)
	return nil
}
