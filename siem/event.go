// Package siem forwards log files (first of all /var/log/audit/audit.log)
// to the security team's SIEM without losing events: sources are tailed from
// a checkpoint, parsed, written to a disk spool (a bbolt file), and
// removed from the spool only once an output has acknowledged them.
//
// Subpackages hold the parts: tail (follow files across rotation), audit
// (group and parse Linux audit records), spool (the durable queue), and
// output/{syslog,relp,hec} (the wire protocols).
package siem

import "time"

// Event is one unit forwarded to a SIEM: one line for format raw, one audit
// event (all records sharing msg=audit(TIME:SERIAL)) for linux-audit.
type Event struct {
	// Tag names the source, e.g. "audit"; outputs match on it.
	Tag string `json:"tag"`
	// Source is the file the event came from.
	Source string `json:"source"`
	// Time is the event's own time when the format has one (audit), else
	// when it was read.
	Time time.Time `json:"time"`
	// Raw is the original text, newline-separated for multi-record events,
	// without a trailing newline. Invalid UTF-8 is kept as read; outputs
	// escape what their protocol cannot carry.
	Raw []byte `json:"raw"`
	// Fields are structured values parsed from Raw, sorted by key (audit: type, serial,
	// time, uid, auid, exe, comm, key, success, ...).
	Fields Fields `json:"fields,omitempty"`
	// Truncated marks a line that was longer than the cap: it was split and
	// this is one piece; Part counts from 1.
	Truncated bool `json:"truncated,omitempty"`
	Part      int  `json:"part,omitempty"`
}
