package audit

import (
	"time"
	"unsafe"
)

// TypeUnparsed is the type of the record and group made of a line that is
// not an audit record.
const TypeUnparsed = "UNPARSED"

// Defaults of GrouperOptions.
const (
	DefaultMaxWait = 2 * time.Second
	DefaultMaxOpen = 1024
)

// GrouperOptions configures a Grouper. Zero values take the defaults.
type GrouperOptions struct {
	// MaxWait is how long a group may stay open waiting for its EOE before
	// Flush returns it as it is (default 2s, auparse's eoe_timeout).
	MaxWait time.Duration
	// MaxOpen is how many groups may be open at once; opening one more
	// closes the oldest (default 1024).
	MaxOpen int
	// KeepLines says that the caller never modifies a line once it gave
	// it to Add, so records and groups may point into it instead of into
	// a copy (the forwarder reads lines into blocks it never writes
	// again; copying each line once more was a tenth of its CPU).
	KeepLines bool
}

// Group is the records of one audit event, in the order they were read.
type Group struct {
	// Serial and Time are the event's stamp. For an UNPARSED group, Serial
	// is 0 and Time is when the line was read (the now given to Add).
	Serial uint64
	Time   time.Time
	// Records has one entry per line, the EOE record included; each
	// Record's Raw is a sub-slice of the group's Raw.
	Records []Record
	// Raw is the original lines, byte for byte without their line endings,
	// joined by "\n", without a trailing newline. (To save allocations, the
	// Grouper cuts Raws and field strings from shared 32 KiB blocks: no two
	// groups' overlap, but one kept alive keeps its block alive. A
	// single-record group's field strings point into its Raw, so Raw must
	// not be modified.)
	Raw []byte
}

// Grouper assembles audit log lines into events, the records of different
// events possibly interleaved. A Grouper is not safe for concurrent use.
//
// The grouping rule, chosen so that a syscall event (SYSCALL, CWD, PATH,
// PROCTITLE, ...) is never split while nothing waits longer than needed:
//
//  1. A record of a serial that has an open group joins that group; an EOE
//     record closes it (and is part of it). A record of another stamp with
//     the same serial (auditd restarted its counter) closes the open group
//     first.
//  2. A record that opens no group, because no group of its serial is open,
//     is a group of its own, returned at once, when it is an EOE (its
//     other records were already returned) or of a user-space type that is
//     never followed by an EOE (USER_*, CRED_*, SERVICE_*, DAEMON_*,
//     ANOM_LOGIN_*, ...; see standalone). Single-record user events have
//     no latency at all.
//  3. Any other record opens a group that waits for its EOE. Kernel records
//     that may or may not get an EOE (LOGIN, AVC, CONFIG_CHANGE, ... are
//     followed by SYSCALL ... EOE when audit rules are loaded, and alone
//     otherwise) are not guessed at: their group is returned by Flush once
//     it has been open MaxWait, or earlier by Add when more than MaxOpen
//     groups are open (the oldest goes first). A later serial is no sign
//     that an event is over: events interleave, and records written during
//     a syscall (AVC, LOGIN) precede its SYSCALL record by any number of
//     other events' records.
//  4. A line that is not an audit record is an UNPARSED group of its own,
//     returned at once. Empty lines are ignored.
//
// The caller calls Flush regularly (say every MaxWait/4) and FlushAll at
// the end of its input; all the groups returned hold every non-empty line
// given to Add exactly once.
type Grouper struct {
	maxWait    time.Duration
	maxOpen    int
	keepLines  bool
	open       map[uint64]*openGroup
	head, tail *openGroup // open groups, oldest first
	free       []*openGroup
	fields     fieldArena // the blocks records' Fields are cut from
	recs       []Record   // the block groups' Records are cut from
	events     eventArena // what Event cuts events' Fields from
	out        []Group    // what Add returns, reused
	raws       []byte     // the chunk lines and groups' Raw are cut from
	lines      int64      // Add calls so far: the next line's number
}

// chunk is the size of the blocks the Grouper copies lines and Raws into,
// rather than allocating each on its own. A block stays in memory while a
// string or Raw cut from it does.
const chunk = 32 << 10

// copyLine returns a copy of line, as bytes and as a string sharing them:
// the record's fields point into the string, and a group of one record
// uses the bytes as its Raw, so the line is copied once, not twice.
func (g *Grouper) copyLine(line []byte) ([]byte, string) {
	b := g.bytes(len(line))
	copy(b, line)
	// Safe: no one writes to b after this (bytes hands out each byte once,
	// and Raw is not to be modified), so the string never changes.
	return b, unsafe.String(unsafe.SliceData(b), len(b))
}

// bytes returns a zeroed []byte of length n whose capacity is n.
func (g *Grouper) bytes(n int) []byte {
	if n > chunk/8 {
		return make([]byte, n)
	}
	if len(g.raws) < n {
		g.raws = make([]byte, chunk)
	}
	b := g.raws[:n:n]
	g.raws = g.raws[n:]
	return b
}

type openGroup struct {
	serial     uint64
	time       time.Time // the event's stamp
	opened     time.Time // the now of the Add that opened it
	recs       []Record  // without Raw
	lines      []string  // the lines of recs, which their fields point into
	size       int       // sum of len(lines) + 1 each
	firstLine  int64     // number of the Add call that opened it
	prev, next *openGroup
}

// NewGrouper returns a Grouper with options o.
func NewGrouper(o GrouperOptions) *Grouper {
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultMaxWait
	}
	if o.MaxOpen <= 0 {
		o.MaxOpen = DefaultMaxOpen
	}
	return &Grouper{
		maxWait:   o.MaxWait,
		maxOpen:   o.MaxOpen,
		keepLines: o.KeepLines,
		open:      make(map[uint64]*openGroup, min(o.MaxOpen+1, 64)),
	}
}

// Open returns how many groups are open, waiting for more records.
func (g *Grouper) Open() int { return len(g.open) }

// Lines returns how many lines Add has been given; the next line is number
// Lines().
func (g *Grouper) Lines() int64 { return g.lines }

// OldestOpenLine returns the number of the first line of the oldest open
// group: a reader that resumes from that line loses no open event.
func (g *Grouper) OldestOpenLine() (int64, bool) {
	if g.head == nil {
		return 0, false
	}
	return g.head.firstLine, true
}

// records returns a slice of n Records cut from a shared block.
func (g *Grouper) records(n int) []Record {
	if n > 16 {
		return make([]Record, n)
	}
	if len(g.recs) < n {
		g.recs = make([]Record, 256)
	}
	r := g.recs[:n:n]
	g.recs = g.recs[n:]
	return r
}

// Add reads one line (a trailing "\n" or "\r\n" is ignored; line is not
// retained unless GrouperOptions.KeepLines) read at now, and returns the groups it completed, oldest first:
// usually none, or the one it closed. The slice returned (not the groups in
// it) is valid until the next Add: one slice per call was a fifth of the
// allocations per event.
func (g *Grouper) Add(line []byte, now time.Time) []Group {
	clear(g.out)
	out := g.add(line, now, g.out[:0])
	g.out = out
	if len(out) == 0 {
		return nil
	}
	return out
}

func (g *Grouper) add(line []byte, now time.Time, out []Group) []Group {
	lineNo := g.lines
	g.lines++
	line = trimEOL(line)
	if len(line) == 0 {
		return out
	}
	var b []byte
	var s string
	if g.keepLines {
		b = line[:len(line):len(line)]
		// Safe: the caller promised not to modify line.
		s = unsafe.String(unsafe.SliceData(b), len(b))
	} else {
		b, s = g.copyLine(line)
	}
	var h recHeader
	if parseHeader(s, &h) != nil {
		return append(out, unparsed(b, now))
	}
	og := g.open[h.serial]
	stale := og != nil && !og.time.Equal(h.t)
	alone := (og == nil || stale) && (h.typ == "EOE" || standalone(h.typ))
	if g.keepLines && !alone {
		// A record that waits in an open group gets a copy: pointing
		// into the caller's (larger) blocks would keep one alive per
		// open group.
		b, s = g.copyLine(line)
		parseHeader(s, &h)
	}
	var r Record
	h.record(&r, &g.fields)

	if stale {
		out = append(out, g.finish(og))
		og = nil
	}
	if og == nil {
		if alone {
			r.Raw = b
			recs := g.records(1)
			recs[0] = r
			return append(out, Group{Serial: r.Serial, Time: r.Time, Records: recs, Raw: r.Raw})
		}
		og = g.start(r.Serial, r.Time, now)
		og.firstLine = lineNo
		if len(g.open) > g.maxOpen {
			out = append(out, g.finish(g.head))
		}
	}
	og.recs = append(og.recs, r)
	og.lines = append(og.lines, s)
	og.size += len(s) + 1
	if r.Type == "EOE" {
		out = append(out, g.finish(og))
	}
	return out
}

// Flush returns, oldest first, the groups that have been open for MaxWait
// or longer at now (the nows given to Add being the clock).
func (g *Grouper) Flush(now time.Time) []Group {
	var out []Group
	for g.head != nil && now.Sub(g.head.opened) >= g.maxWait {
		out = append(out, g.finish(g.head))
	}
	return out
}

// FlushAll returns all the open groups, oldest first.
func (g *Grouper) FlushAll() []Group {
	var out []Group
	for g.head != nil {
		out = append(out, g.finish(g.head))
	}
	return out
}

func unparsed(raw []byte, now time.Time) Group {
	return Group{
		Time: now,
		Records: []Record{{
			Type:   TypeUnparsed,
			Fields: Fields{{Key: "type", Value: TypeUnparsed}},
			Raw:    raw,
		}},
		Raw: raw,
	}
}

// start opens a group at the tail of the list.
func (g *Grouper) start(serial uint64, t, now time.Time) *openGroup {
	var og *openGroup
	if n := len(g.free); n > 0 {
		og, g.free = g.free[n-1], g.free[:n-1]
	} else {
		og = &openGroup{recs: make([]Record, 0, 8), lines: make([]string, 0, 8)}
	}
	og.serial, og.time, og.opened = serial, t, now
	og.prev, og.next = g.tail, nil
	if g.tail != nil {
		g.tail.next = og
	} else {
		g.head = og
	}
	g.tail = og
	g.open[serial] = og
	return og
}

// finish closes og and returns its group.
func (g *Grouper) finish(og *openGroup) Group {
	raw := g.bytes(max(og.size-1, 0))[:0]
	recs := g.records(len(og.recs))
	copy(recs, og.recs)
	for i, l := range og.lines {
		if i > 0 {
			raw = append(raw, '\n')
		}
		start := len(raw)
		raw = append(raw, l...)
		recs[i].Raw = raw[start:len(raw):len(raw)]
	}
	grp := Group{Serial: og.serial, Time: og.time, Records: recs, Raw: raw}

	if og.prev != nil {
		og.prev.next = og.next
	} else {
		g.head = og.next
	}
	if og.next != nil {
		og.next.prev = og.prev
	} else {
		g.tail = og.prev
	}
	delete(g.open, og.serial)
	if cap(og.recs) <= 64 && cap(og.lines) <= 64 {
		clear(og.recs)
		clear(og.lines)
		*og = openGroup{recs: og.recs[:0], lines: og.lines[:0]}
		g.free = append(g.free, og)
	}
	return grp
}
