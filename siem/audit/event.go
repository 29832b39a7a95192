package audit

import (
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// eventKeys are the record fields an Event carries, looked up in the
// group's SYSCALL record first, then in its records in order. The upper-case
// ones are the ENRICHED format's translations (AUID="unset", UID="root",
// SYSCALL=openat). op .. terminal come from the nested msg='...' of
// user-space records (and from the body of DAEMON_*, LOGIN, ...).
var eventKeys = [...]string{
	"uid", "auid", "euid", "pid", "ppid", "ses", "tty", "exe", "comm", "key",
	"success", "exit", "syscall", "arch",
	"op", "acct", "res", "addr", "hostname", "terminal",
	"cwd", "proctitle", "node",
	"UID", "AUID", "EUID", "SYSCALL", "ARCH",
}

// The keys of the fields an Event may have: eventKeys, then these.
const (
	keyType = len(eventKeys) + iota
	keyTypes
	keySerial
	keyTime
	numKeys
)

// keyOrder lists the indexes of all the keys (eventKeys', then keyType ..
// keyTime) in the byte order of their names, the order of siem.Fields.
var keyOrder = func() []int {
	names := keyNames()
	order := make([]int, len(names))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(names[a], names[b]) })
	return order
}()

func keyNames() []string {
	return append(eventKeys[:len(eventKeys):len(eventKeys)], "type", "types", "serial", "time")
}

var allKeys = keyNames()

// eventKey returns the index of k in eventKeys, or -1. A switch, which the
// compiler turns into a search on length and bytes, costs less than a map
// lookup for each field of each record.
func eventKey(k string) int {
	switch k {
	case "uid":
		return 0
	case "auid":
		return 1
	case "euid":
		return 2
	case "pid":
		return 3
	case "ppid":
		return 4
	case "ses":
		return 5
	case "tty":
		return 6
	case "exe":
		return 7
	case "comm":
		return 8
	case "key":
		return 9
	case "success":
		return 10
	case "exit":
		return 11
	case "syscall":
		return 12
	case "arch":
		return 13
	case "op":
		return 14
	case "acct":
		return 15
	case "res":
		return 16
	case "addr":
		return 17
	case "hostname":
		return 18
	case "terminal":
		return 19
	case "cwd":
		return 20
	case "proctitle":
		return 21
	case "node":
		return 22
	case "UID":
		return 23
	case "AUID":
		return 24
	case "EUID":
		return 25
	case "SYSCALL":
		return 26
	case "ARCH":
		return 27
	}
	return -1
}

// Event returns the group as a siem.Event of tag and source. Raw is the
// group's Raw (shared, not copied) and Time its Time. Fields has:
//
//   - type: the first record's type; types: the distinct record types in
//     order, comma-separated, EOE left out unless it is the only one;
//   - serial, and time (the stamp in RFC 3339 with nanoseconds, UTC);
//   - when a record has them: uid, auid, euid, pid, ppid, ses, tty, exe,
//     comm, key, success, exit, syscall, arch, op, acct, res, addr,
//     hostname, terminal, cwd, proctitle (decoded), node, and for the
//     ENRICHED format UID, AUID, EUID, SYSCALL, ARCH; each taken from the
//     SYSCALL record if it has the field, else from the first record that
//     does.
//
// An UNPARSED group's Fields is just {"type": "UNPARSED"}.
func (g Group) Event(tag, source string) siem.Event {
	return g.event(tag, source, nil)
}

// Event returns gr.Event(tag, source), its Fields and their strings cut
// from blocks the Grouper shares between events instead of allocated for
// each (a block stays in memory while an event cut from it does).
func (g *Grouper) Event(gr Group, tag, source string) siem.Event {
	return gr.event(tag, source, &g.events)
}

// eventArena is where Grouper.Event cuts Fields and strings from.
type eventArena struct {
	fields []siem.Field
	strs   strings.Builder
	// The stamp's second formatted as RFC 3339 up to the seconds, for
	// tsSec: consecutive events mostly share their second.
	tsSec    int64
	tsPrefix []byte
}

// appendTime appends t (UTC) as time.RFC3339Nano does.
func (a *eventArena) appendTime(b []byte, t time.Time) []byte {
	sec := t.Unix()
	if a.tsPrefix == nil || sec != a.tsSec {
		if y := t.Year(); y < 1 || y > 9999 {
			return t.AppendFormat(b, time.RFC3339Nano)
		}
		a.tsPrefix, a.tsSec = t.AppendFormat(a.tsPrefix[:0], "2006-01-02T15:04:05"), sec
	}
	b = append(b, a.tsPrefix...)
	if ns := t.Nanosecond(); ns != 0 {
		var d [10]byte
		d[0] = '.'
		for i := 9; i >= 1; i-- {
			d[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for d[n-1] == '0' {
			n--
		}
		b = append(b, d[:n]...)
	}
	return append(b, 'Z')
}

func (a *eventArena) str(b []byte) string {
	if a.strs.Cap()-a.strs.Len() < len(b) {
		a.strs = strings.Builder{}
		a.strs.Grow(max(chunk, len(b)))
	}
	start := a.strs.Len()
	a.strs.Write(b)
	// Safe: a Builder only appends, so the bytes of a string it returned
	// never change.
	return a.strs.String()[start:]
}

func (a *eventArena) fieldSlice(n int) siem.Fields {
	if cap(a.fields)-len(a.fields) < n {
		a.fields = make([]siem.Field, 0, max(fieldBlock, n))
	}
	f := a.fields[len(a.fields) : len(a.fields) : len(a.fields)+n]
	a.fields = a.fields[:len(a.fields)+n]
	return f
}

func (g Group) event(tag, source string, a *eventArena) siem.Event {
	ev := siem.Event{Tag: tag, Source: source, Time: g.Time, Raw: g.Raw}
	if len(g.Records) == 0 || g.Records[0].Type == TypeUnparsed && g.Records[0].Time.IsZero() {
		ev.Fields = siem.Fields{{Key: "type", Value: TypeUnparsed}}
		return ev
	}
	var vals [numKeys]string
	var found uint64
	take := func(fs Fields) {
		for _, e := range fs {
			if i := eventKey(e.Key); i >= 0 && found&(1<<i) == 0 {
				found |= 1 << i
				vals[i] = e.Value
			}
		}
	}
	// The SYSCALL record's fields first, then the records' in order: each
	// key's value is the first one found.
	sys := -1
	for i := range g.Records {
		if g.Records[i].Type == "SYSCALL" {
			sys = i
			take(g.Records[i].Fields)
			break
		}
	}
	for i := range g.Records {
		if i != sys {
			take(g.Records[i].Fields)
		}
	}

	// serial and time share one allocation.
	var buf [64]byte
	b := strconv.AppendUint(buf[:0], g.Serial, 10)
	ns := len(b)
	var st string
	if a != nil {
		st = a.str(a.appendTime(b, g.Time.UTC()))
	} else {
		st = string(g.Time.UTC().AppendFormat(b, time.RFC3339Nano))
	}
	vals[keyType] = g.Records[0].Type
	vals[keyTypes] = types(g.Records)
	vals[keySerial] = st[:ns]
	vals[keyTime] = st[ns:]
	found |= 1<<keyType | 1<<keyTypes | 1<<keySerial | 1<<keyTime

	var f siem.Fields
	if a != nil {
		f = a.fieldSlice(bits.OnesCount64(found))
	} else {
		f = make(siem.Fields, 0, bits.OnesCount64(found))
	}
	for _, i := range keyOrder {
		if found&(1<<i) != 0 {
			f = append(f, siem.Field{Key: allKeys[i], Value: vals[i]})
		}
	}
	ev.Fields = f
	return ev
}

// types returns the distinct types of recs, comma-separated in order of
// first appearance, EOE left out unless it is the only one.
func types(recs []Record) string {
	if len(recs) == 1 {
		return recs[0].Type
	}
	var b strings.Builder
	var seenSet map[string]bool // for long groups, instead of a scan
	if len(recs) > 16 {
		seenSet = make(map[string]bool)
	}
	for i, r := range recs {
		if r.Type == "EOE" {
			continue
		}
		seen := false
		if seenSet != nil {
			seen = seenSet[r.Type]
			seenSet[r.Type] = true
		} else {
			for _, p := range recs[:i] {
				if p.Type == r.Type {
					seen = true
					break
				}
			}
		}
		if !seen {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(r.Type)
		}
	}
	if b.Len() == 0 {
		return "EOE"
	}
	return b.String()
}
