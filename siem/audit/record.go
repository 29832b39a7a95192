// Package audit parses Linux audit log lines (/var/log/audit/audit.log, in
// the RAW or ENRICHED log_format) and groups the records of one event.
//
// An audit event is every record sharing one msg=audit(TIME:SERIAL) stamp:
// a syscall event is a SYSCALL record followed by auxiliary records (CWD,
// PATH, EXECVE, SOCKADDR, PROCTITLE, ...) and closed by an EOE record. The
// records of different events may interleave in the log. See Grouper for how
// events are told complete.
//
// Nothing read is ever dropped: a line that is not an audit record becomes
// a group (and an event) of its own with type UNPARSED, and the Raw of the
// groups a Grouper returns holds every non-empty line it was given exactly
// once, byte for byte (a trailing "\r" or "\n" aside).
package audit

import (
	"errors"
	"strings"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// Record is one parsed audit log line.
type Record struct {
	// Type is the record type, e.g. "SYSCALL", "PATH", "USER_LOGIN", or
	// "UNKNOWN[1334]" as auditd writes types it has no name for.
	Type string
	// Time and Serial are the event stamp msg=audit(TIME:SERIAL); Time is
	// in UTC.
	Time   time.Time
	Serial uint64
	// Fields holds the record's key=value pairs with quotes removed, in
	// the order written, each key once (its first occurrence):
	//   - the fields before msg=audit(...) other than type (e.g. node=);
	//   - the body after "): ", values kept as written ("(null)", "?");
	//   - for user-space records, the pairs nested in msg='...' (op, acct,
	//     exe, hostname, addr, terminal, res, ...), plus the whole nested
	//     text as "msg";
	//   - for the ENRICHED format, the translated fields after the 0x1D
	//     separator, with their keys as given (AUID, UID, SYSCALL, ...).
	// Values of untrusted-string fields (proctitle, comm, exe, cwd, name,
	// cmd, acct) that auditd hex-encoded are decoded; NUL separators (the
	// argv boundaries in proctitle) become spaces, trailing NULs dropped.
	// Decoding applies only to an unquoted value of even length made of hex
	// digits only: a quoted value is always taken as is.
	// It is never nil for a parsed record.
	Fields Fields
	// Raw is the line as read, without its line ending.
	Raw []byte
}

// Fields are a record's fields in the order written, each key once. A slice
// of pairs pointing into the line, not a map: building a map per record
// was a third of the linux-audit forwarder's CPU.
type Fields []siem.Field

// Lookup returns the value of key k.
func (f Fields) Lookup(k string) (string, bool) {
	for i := range f {
		if f[i].Key == k {
			return f[i].Value, true
		}
	}
	return "", false
}

// Get returns the value of key k, "" when there is none.
func (f Fields) Get(k string) string {
	v, _ := f.Lookup(k)
	return v
}

// Errors returned by ParseRecord.
var (
	ErrNoHeader = errors.New("audit: no msg=audit(TIME:SERIAL) stamp")
	ErrBadStamp = errors.New("audit: malformed msg=audit(TIME:SERIAL) stamp")
	ErrNoType   = errors.New("audit: no type= before msg=audit(...)")
)

// gs is the group separator byte the ENRICHED log_format puts between the
// record and its translated fields.
const gs = 0x1D

const header = "msg=audit("

// ParseRecord parses one audit log line. A trailing "\n", "\r\n" or "\r" is
// ignored. It returns an error, and never panics, for a line that is not an
// audit record (no type=... msg=audit(TIME:SERIAL) header).
func ParseRecord(line []byte) (Record, error) {
	line = trimEOL(line)
	var r Record
	if err := parseRecord(string(line), &r, nil); err != nil {
		return Record{}, err
	}
	r.Raw = append([]byte(nil), line...)
	return r, nil
}

// trimEOL strips the line ending: any trailing '\n' and '\r' bytes.
func trimEOL(line []byte) []byte {
	n := len(line)
	for n > 0 && (line[n-1] == '\n' || line[n-1] == '\r') {
		n--
	}
	return line[:n]
}

// parseRecord fills r (all but Raw) from the line s. The field strings are
// substrings of s, so s is the only copy of the line they keep alive. The
// Fields are cut from fa when it is not nil.
func parseRecord(s string, r *Record, fa *fieldArena) error {
	var h recHeader
	if err := parseHeader(s, &h); err != nil {
		return err
	}
	h.record(r, fa)
	return nil
}

// recHeader is a record's header, parsed, and the parts its fields are in.
type recHeader struct {
	typ                    string
	t                      time.Time
	serial                 uint64
	prefix, body, enriched string
}

// parseHeader parses the line s up to its fields.
func parseHeader(s string, h *recHeader) error {
	rec, enriched := s, ""
	if i := strings.IndexByte(s, gs); i >= 0 {
		rec, enriched = s[:i], s[i+1:]
	}

	// The header: "type=T msg=audit(" on the fast path, else any fields
	// (node=..., type=...) before the first msg=audit(.
	var typ, prefix string
	var stamp int
	if strings.HasPrefix(rec, "type=") {
		if sp := strings.IndexByte(rec, ' '); sp > 0 && strings.HasPrefix(rec[sp+1:], header) {
			typ, stamp = rec[len("type="):sp], sp+1+len(header)
		}
	}
	if stamp == 0 {
		i := strings.Index(rec, header)
		if i < 0 {
			return ErrNoHeader
		}
		prefix, stamp = rec[:i], i+len(header)
		sc := scanner{s: prefix}
		for {
			k, v, _, ok := sc.next()
			if !ok {
				break
			}
			if k == "type" {
				typ = v
				break
			}
		}
	}
	if typ == "" {
		return ErrNoType
	}

	t, serial, body, ok := parseStamp(rec[stamp:])
	if !ok {
		return ErrBadStamp
	}
	*h = recHeader{typ: typ, t: t, serial: serial, prefix: prefix, body: body, enriched: enriched}
	return nil
}

// record fills r (all but Raw) from h, cutting the Fields from fa when it
// is not nil.
func (h *recHeader) record(r *Record, fa *fieldArena) {
	prefix, body, enriched := h.prefix, h.body, h.enriched
	// Upper bound of the number of fields, so the slice is sized once.
	n := strings.Count(body, "=") + strings.Count(enriched, "=")
	if prefix != "" {
		n += strings.Count(prefix, "=")
	}
	var f Fields
	if fa != nil {
		f = fa.get(n)
	} else {
		f = make(Fields, 0, n)
	}
	f = fill(f, prefix, body, enriched)
	if fa != nil {
		fa.used(len(f))
	}
	r.Type, r.Time, r.Serial, r.Fields = h.typ, h.t, h.serial, f[:len(f):len(f)]
}

// fieldArena hands out the Fields of records from shared blocks: one
// allocation per block instead of one per record. A block stays in memory
// while a record cut from it does.
type fieldArena struct {
	block []siem.Field
}

// fieldBlock is how many Fields a block holds: 1020 of 32 bytes and the
// allocation's header fit the largest small size class (32 KiB); 1024
// would make every block a large allocation, taken under the heap lock.
const fieldBlock = 1020

// get returns an empty, non-nil slice with room for n fields; used must
// follow with how many were taken.
func (a *fieldArena) get(n int) Fields {
	if n > fieldBlock/4 {
		return make(Fields, 0, n)
	}
	if cap(a.block)-len(a.block) < n || a.block == nil {
		a.block = make([]siem.Field, 0, fieldBlock)
	}
	return Fields(a.block[len(a.block):len(a.block)])
}

func (a *fieldArena) used(n int) {
	if cap(a.block)-len(a.block) >= n {
		a.block = a.block[:len(a.block)+n]
	}
}

// parseStamp parses "SECONDS[.FRACTION]:SERIAL)" and what follows (an
// optional ':' and spaces), returning the body after it.
func parseStamp(s string) (t time.Time, serial uint64, body string, ok bool) {
	i := 0
	var sec int64
	for ; i < len(s) && isDigit(s[i]); i++ {
		sec = sec*10 + int64(s[i]-'0')
		if sec > maxSec {
			return t, 0, "", false
		}
	}
	if i == 0 {
		return t, 0, "", false
	}
	var nsec int64
	if i < len(s) && s[i] == '.' {
		i++
		start, scale := i, int64(1e9)
		for ; i < len(s) && isDigit(s[i]); i++ {
			if scale > 1 {
				scale /= 10
				nsec += int64(s[i]-'0') * scale
			}
		}
		if i == start {
			return t, 0, "", false
		}
	}
	if i >= len(s) || s[i] != ':' {
		return t, 0, "", false
	}
	i++
	start := i
	for ; i < len(s) && isDigit(s[i]); i++ {
		d := uint64(s[i] - '0')
		if serial > (1<<64-1-d)/10 {
			return t, 0, "", false
		}
		serial = serial*10 + d
	}
	if i == start || i >= len(s) || s[i] != ')' {
		return t, 0, "", false
	}
	i++
	if i < len(s) && s[i] == ':' {
		i++
	}
	for i < len(s) && s[i] == ' ' {
		i++
	}
	return time.Unix(sec, nsec).UTC(), serial, s[i:], true
}

// maxSec is 9999-12-31T23:59:59Z: a later stamp is taken as malformed, as
// it could not be encoded as RFC 3339 (or JSON) downstream.
const maxSec = 253402300799

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// fill appends the fields of the parts of a record to f, first
// occurrence of a key winning, and returns f.
func fill(f Fields, prefix, body, enriched string) Fields {
	// seen has a bit per (length, first byte) of the keys stored: a key
	// whose bit is clear is new without a search through f.
	var seen uint64
	put := func(k, v string, quote byte) {
		bit := uint64(1) << ((uint(len(k))*7 + uint(k[0])) & 63)
		if seen&bit != 0 {
			if _, dup := f.Lookup(k); dup {
				return
			}
		}
		seen |= bit
		if quote == 0 && hexEncoded(k) && isHex(v) {
			v = decodeHex(v)
		}
		f = append(f, siem.Field{Key: k, Value: v})
	}
	if prefix != "" {
		sc := scanner{s: prefix}
		for {
			k, v, q, ok := sc.next()
			if !ok {
				break
			}
			if k != "type" {
				put(k, v, q)
			}
		}
	}
	sc := scanner{s: body, top: true}
	for {
		k, v, q, ok := sc.next()
		if !ok {
			break
		}
		put(k, v, q)
		if q == '\'' && k == "msg" {
			// User-space record: msg='op=login acct="root" ... res=success'.
			in := scanner{s: v}
			for {
				k, v, q, ok := in.next()
				if !ok {
					break
				}
				put(k, v, q)
			}
		}
	}
	for sc := (scanner{s: enriched}); ; {
		k, v, q, ok := sc.next()
		if !ok {
			break
		}
		put(k, v, q)
	}
	return f
}

// hexEncoded reports whether auditd writes field k as an untrusted string:
// either quoted, or hex-encoded without quotes when it holds a space, a
// quote, a control or a non-ASCII byte.
func hexEncoded(k string) bool {
	switch k {
	case "proctitle", "comm", "exe", "cwd", "name", "cmd", "acct":
		return true
	}
	return false
}

// isHex reports whether s is a non-empty, even-length run of hex digits.
func isHex(s string) bool {
	if len(s) == 0 || len(s)%2 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if unhex(s[i]) > 15 {
			return false
		}
	}
	return true
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 255
}

// decodeHex decodes s (isHex(s) must hold), turning NULs into spaces and
// dropping trailing NULs.
func decodeHex(s string) string {
	n := len(s) / 2
	for n > 0 && s[2*n-2] == '0' && s[2*n-1] == '0' {
		n--
	}
	var b strings.Builder
	b.Grow(n)
	for i := 0; i < n; i++ {
		c := unhex(s[2*i])<<4 | unhex(s[2*i+1])
		if c == 0 {
			c = ' '
		}
		b.WriteByte(c)
	}
	return b.String()
}

// scanner splits "k1=v1 k2="v 2" k3='...'" into pairs. Words without '='
// (as in "avc:  denied  { read } for pid=1") are skipped. A value in double
// or single quotes ends at the next same quote; at the top level of a body,
// msg='...' ends at the last single quote, since the nested text may hold
// single quotes of its own. A value starting with '{' (the ENRICHED
// format's SADDR={ ... }) ends at the next '}', which it keeps. An unclosed
// quote or brace runs to the end.
type scanner struct {
	s   string
	i   int
	top bool
}

func (sc *scanner) next() (key, val string, quote byte, ok bool) {
	s, i := sc.s, sc.i
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i >= len(s) {
			sc.i = i
			return "", "", 0, false
		}
		ks := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '\t' {
			i++
		}
		if i >= len(s) || s[i] != '=' {
			continue // a bare word
		}
		key = s[ks:i]
		i++
		quote = 0
		if i < len(s) && (s[i] == '"' || s[i] == '\'') {
			quote = s[i]
			i++
			var j int
			if quote == '\'' && sc.top && key == "msg" {
				j = strings.LastIndexByte(s[i:], quote)
			} else {
				j = strings.IndexByte(s[i:], quote)
			}
			if j < 0 {
				val, i = s[i:], len(s)
			} else {
				val, i = s[i:i+j], i+j+1
			}
		} else if i < len(s) && s[i] == '{' {
			// ENRICHED SADDR={ saddr_fam=inet laddr=10.0.0.1 lport=22 }
			j := strings.IndexByte(s[i:], '}')
			if j < 0 {
				val, i = s[i:], len(s)
			} else {
				val, i = s[i:i+j+1], i+j+1
			}
		} else {
			vs := i
			for i < len(s) && s[i] != ' ' && s[i] != '\t' {
				i++
			}
			val = s[vs:i]
		}
		if key == "" {
			continue // "=value"
		}
		sc.i = i
		return key, val, quote, true
	}
}
