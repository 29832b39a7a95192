package audit

import (
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
	ev := siem.Event{Tag: tag, Source: source, Time: g.Time, Raw: g.Raw}
	if len(g.Records) == 0 || g.Records[0].Type == TypeUnparsed && g.Records[0].Time.IsZero() {
		ev.Fields = map[string]string{"type": TypeUnparsed}
		return ev
	}
	f := make(map[string]string, 16)
	f["type"] = g.Records[0].Type
	f["types"] = types(g.Records)
	f["serial"] = strconv.FormatUint(g.Serial, 10)
	f["time"] = g.Time.UTC().Format(time.RFC3339Nano)

	var sys map[string]string
	for i := range g.Records {
		if g.Records[i].Type == "SYSCALL" {
			sys = g.Records[i].Fields
			break
		}
	}
	for _, k := range eventKeys {
		if v, ok := sys[k]; ok {
			f[k] = v
			continue
		}
		for i := range g.Records {
			if v, ok := g.Records[i].Fields[k]; ok {
				f[k] = v
				break
			}
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
