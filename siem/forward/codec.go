package forward

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// Spool entries are a compact binary form of siem.Event: decoding them is on
// the send path of every event, and JSON (with Raw in base64) cost a third
// of the forwarder's CPU. Layout, version 1:
//
//	0x01 | varint time (unix ns) | str tag | str source | str raw |
//	flags (bit 0: truncated) | uvarint part | uvarint n | n x (str key, str value)
//
// where str is a uvarint length and the bytes; fields sorted by key (in map
// order in the entries of builds before siem.Fields, sorted when read). Entries
// that start with '{' are the JSON of earlier builds.
const codecV1 = 0x01

var errCorrupt = errors.New("corrupt spool entry")

// encodedSize is an upper bound of the size of ev's entry.
func encodedSize(ev siem.Event) int {
	n := 1 + binary.MaxVarintLen64*4 + len(ev.Tag) + len(ev.Source) + len(ev.Raw) + 1 + binary.MaxVarintLen64*2
	for _, e := range ev.Fields {
		n += len(e.Key) + len(e.Value) + 2*binary.MaxVarintLen64
	}
	return n
}

func encodeEvent(ev siem.Event) ([]byte, error) {
	b := make([]byte, 0, encodedSize(ev))
	b = append(b, codecV1)
	var t int64
	if !ev.Time.IsZero() {
		t = ev.Time.UnixNano()
	}
	b = binary.AppendVarint(b, t)
	b = appendStr(b, ev.Tag)
	b = appendStr(b, ev.Source)
	b = binary.AppendUvarint(b, uint64(len(ev.Raw)))
	b = append(b, ev.Raw...)
	var flags byte
	if ev.Truncated {
		flags |= 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(ev.Part))
	b = binary.AppendUvarint(b, uint64(len(ev.Fields)))
	for _, e := range ev.Fields {
		b = appendStr(b, e.Key)
		b = appendStr(b, e.Value)
	}
	return b, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeEvent reads an entry; Raw aliases b.
func decodeEvent(b []byte) (siem.Event, error) {
	var ev siem.Event
	if len(b) > 0 && b[0] == '{' {
		err := json.Unmarshal(b, &ev)
		return ev, err
	}
	if len(b) == 0 || b[0] != codecV1 {
		return ev, errCorrupt
	}
	d := decoder{b: b[1:]}
	t := d.varint()
	if t != 0 {
		ev.Time = time.Unix(0, t)
	}
	ev.Tag = d.str()
	ev.Source = d.str()
	ev.Raw = d.bytes()
	flags := d.byte()
	ev.Truncated = flags&1 != 0
	ev.Part = int(d.uvarint())
	if n := d.uvarint(); n > 0 && d.err == nil {
		if n > uint64(len(d.b)) {
			return ev, errCorrupt
		}
		ev.Fields = make(siem.Fields, 0, n)
		for range n {
			k := d.str()
			ev.Fields = append(ev.Fields, siem.Field{Key: k, Value: d.str()})
		}
		// Entries of earlier builds have their fields in map order.
		ev.Fields = ev.Fields.Normalize()
	}
	if d.err != nil || len(d.b) != 0 {
		return siem.Event{}, errCorrupt
	}
	return ev, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.err = errCorrupt
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.err = errCorrupt
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}
