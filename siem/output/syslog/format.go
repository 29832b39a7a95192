package syslog

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/bud-ecosystem/budfleet/siem"
)

// Facilities and severities used for PRI (RFC 5424 section 6.2.1).
const (
	FacilityAuthPriv = 10
	SeverityInfo     = 6
	// DefaultPriority is authpriv.info: 10*8 + 6.
	DefaultPriority = FacilityAuthPriv*8 + SeverityInfo
	// DefaultSDID is the SD-ID of the element that carries Event.Fields.
	// 32473 is the private enterprise number RFC 5612 reserves for
	// documentation; a site with its own number can use it instead.
	DefaultSDID = "audit@32473"
	// NilValue is RFC 5424's NILVALUE.
	NilValue = "-"
)

// Header field limits (RFC 5424 section 6).
const (
	maxHostname = 255
	maxAppName  = 48
	maxProcID   = 128
	maxMsgID    = 32
	maxSDName   = 32
)

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// Formatter turns events into RFC 5424 messages:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SDID name="value" ...] MSG
//
// TIMESTAMP is Event.Time in UTC with microseconds ("-" when zero or
// outside years 0-9999); MSGID is Event.Tag; the structured-data element
// SDID carries Event.Fields sorted by name; MSG is Event.Raw.
//
// Header fields are PRINTUSASCII without spaces: other bytes become '_'
// and overlong values are cut (HOSTNAME 255, APP-NAME 48, PROCID 128,
// MSGID 32 bytes); an empty one is "-".
//
// A field name that is a valid SD-NAME (1-32 printable ASCII characters
// other than '=', ' ', ']' and '"') is kept as is. Other names have those
// characters replaced by '_' and are cut to 32 bytes; a name that then
// equals one already present is dropped (the valid one wins), and so is an
// empty name. Values are UTF-8 (invalid bytes become U+FFFD) with '"',
// '\' and ']' escaped by a backslash.
//
// MSG is Raw as is. When Raw is valid UTF-8 it is prefixed with the UTF-8
// BOM, which tells the receiver it is UTF-8; other bytes are sent without
// the BOM, which RFC 5424 allows (the receiver treats them as opaque
// octets). An empty Raw sends no MSG part.
type Formatter struct {
	Hostname string
	AppName  string
	// ProcID is the PROCID field; empty means "-".
	ProcID string
	// Priority is PRI = facility*8 + severity, 1-191; 0 (or anything out
	// of range) means DefaultPriority, authpriv.info (86).
	Priority int
	// SDID names the structured-data element; empty means DefaultSDID.
	SDID string

	// The formatted date and time of tsSec, up to the seconds' dot:
	// formatting a timestamp from scratch was a sixth of the forwarder's
	// CPU, and consecutive events mostly share their second.
	tsSec    int64
	tsPrefix []byte
}

// Format formats ev with the default priority and SD-ID.
func Format(ev siem.Event, hostname, appName string) []byte {
	f := Formatter{Hostname: hostname, AppName: appName}
	return f.Append(nil, ev)
}

// Append appends ev formatted as an RFC 5424 message to dst.
func (f *Formatter) Append(dst []byte, ev siem.Event) []byte {
	pri := f.Priority
	if pri <= 0 || pri > 191 {
		pri = DefaultPriority
	}
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(pri), 10)
	dst = append(dst, ">1 "...)
	dst = f.appendTimestamp(dst, ev.Time)
	dst = append(dst, ' ')
	dst = appendHeaderField(dst, f.Hostname, maxHostname)
	dst = append(dst, ' ')
	dst = appendHeaderField(dst, f.AppName, maxAppName)
	dst = append(dst, ' ')
	dst = appendHeaderField(dst, f.ProcID, maxProcID)
	dst = append(dst, ' ')
	dst = appendHeaderField(dst, ev.Tag, maxMsgID)
	dst = append(dst, ' ')
	sdid := f.SDID
	if sdid == "" {
		sdid = DefaultSDID
	}
	dst = f.appendSD(dst, sdid, ev.Fields)
	if len(ev.Raw) > 0 {
		dst = append(dst, ' ')
		if utf8.Valid(ev.Raw) {
			dst = append(dst, utf8BOM...)
		}
		dst = append(dst, ev.Raw...)
	}
	return dst
}

func (f *Formatter) appendTimestamp(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(dst, NilValue...)
	}
	if sec := t.Unix(); sec != f.tsSec || f.tsPrefix == nil {
		t = t.UTC()
		if y := t.Year(); y < 0 || y > 9999 {
			return append(dst, NilValue...)
		}
		f.tsPrefix = t.AppendFormat(f.tsPrefix[:0], "2006-01-02T15:04:05.")
		f.tsSec = sec
	}
	dst = append(dst, f.tsPrefix...)
	us := t.Nanosecond() / 1000
	var d [6]byte
	for i := 5; i >= 0; i-- {
		d[i] = byte('0' + us%10)
		us /= 10
	}
	dst = append(dst, d[:]...)
	return append(dst, 'Z')
}

func printUSASCII(c byte) bool { return c >= 33 && c <= 126 }

func appendHeaderField(dst []byte, s string, max int) []byte {
	if s == "" {
		return append(dst, NilValue...)
	}
	if len(s) > max {
		s = s[:max]
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !printUSASCII(c) {
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}

// ValidSDName reports whether s is an RFC 5424 SD-NAME: 1-32 characters of
// PRINTUSASCII other than '=', ' ', ']' and '"'.
func ValidSDName(s string) bool {
	if len(s) == 0 || len(s) > maxSDName {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !sdNameChar(s[i]) {
			return false
		}
	}
	return true
}

func sdNameChar(c byte) bool {
	return printUSASCII(c) && c != '=' && c != ']' && c != '"'
}

// sanitizeSDName replaces what may not be in an SD-NAME by '_' and cuts
// it to 32 bytes.
func sanitizeSDName(s string) string {
	if len(s) > maxSDName {
		s = s[:maxSDName]
	}
	b := []byte(s)
	for i, c := range b {
		if !sdNameChar(c) {
			b[i] = '_'
		}
	}
	return string(b)
}

// SDParams returns the (name, value) pairs Append puts into the
// structured-data element for fields, in order, names sanitized and values
// made valid UTF-8 (not yet escaped).
func SDParams(fields siem.Fields) []SDParam {
	if len(fields) == 0 {
		return nil
	}
	fields = fields.Normalize()
	params := make([]SDParam, 0, len(fields))
	used := make(map[string]bool, len(fields))
	for _, e := range fields {
		if ValidSDName(e.Key) {
			used[e.Key] = true
			params = append(params, SDParam{Name: e.Key, Value: validUTF8(e.Value)})
		}
	}
	for _, e := range fields {
		if ValidSDName(e.Key) {
			continue
		}
		n := sanitizeSDName(e.Key)
		if n == "" || used[n] {
			continue
		}
		used[n] = true
		params = append(params, SDParam{Name: n, Value: validUTF8(e.Value)})
	}
	return params
}

func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
}

// plainSD reports whether fields can be written as they are: sorted, each
// name once and a valid SD-NAME, as the fields of audit events are.
func plainSD(fields siem.Fields) bool {
	for i, e := range fields {
		if !ValidSDName(e.Key) || i > 0 && fields[i-1].Key >= e.Key {
			return false
		}
	}
	return true
}

func (f *Formatter) appendSD(dst []byte, sdid string, fields siem.Fields) []byte {
	if len(fields) == 0 {
		return append(dst, NilValue...)
	}
	plain := plainSD(fields)
	var params []SDParam
	if !plain {
		params = SDParams(fields)
		if len(params) == 0 {
			return append(dst, NilValue...)
		}
	}
	if !ValidSDName(sdid) {
		sdid = sanitizeSDName(sdid)
		if sdid == "" {
			sdid = DefaultSDID
		}
	}
	dst = append(dst, '[')
	dst = append(dst, sdid...)
	if plain {
		// The common case: straight from the event into the message,
		// nothing renamed, sorted or copied.
		for _, e := range fields {
			dst = appendParam(dst, e.Key, e.Value)
		}
	} else {
		for _, p := range params {
			dst = appendParam(dst, p.Name, p.Value)
		}
	}
	return append(dst, ']')
}

// appendParam appends ` name="value"`, value made valid UTF-8 and escaped.
func appendParam(dst []byte, name, value string) []byte {
	dst = append(dst, ' ')
	dst = append(dst, name...)
	dst = append(dst, '=', '"')
	if !utf8.ValidString(value) {
		value = validUTF8(value)
	}
	// Copy runs of bytes that need no escape whole.
	start := 0
	for i := 0; i < len(value); i++ {
		if c := value[i]; c == '"' || c == '\\' || c == ']' {
			dst = append(dst, value[start:i]...)
			dst = append(dst, '\\', c)
			start = i + 1
		}
	}
	dst = append(dst, value[start:]...)
	return append(dst, '"')
}

// SDElement is one structured-data element.
type SDElement struct {
	ID     string
	Params []SDParam
}

// SDParam is one SD-PARAM with its value unescaped.
type SDParam struct {
	Name  string
	Value string
}

// Message is a parsed RFC 5424 message.
type Message struct {
	Priority  int
	Version   int
	Timestamp string // as sent; "-" for none
	Hostname  string
	AppName   string
	ProcID    string
	MsgID     string
	SD        []SDElement // nil for "-"
	// BOM reports that MSG started with the UTF-8 BOM; Msg is without it.
	BOM bool
	Msg []byte
}

// Time parses Timestamp; the zero time for "-".
func (m *Message) Time() (time.Time, error) {
	if m.Timestamp == NilValue {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, m.Timestamp)
}

// Param returns the value of the parameter name of element id.
func (m *Message) Param(id, name string) (string, bool) {
	for _, e := range m.SD {
		if e.ID != id {
			continue
		}
		for _, p := range e.Params {
			if p.Name == name {
				return p.Value, true
			}
		}
	}
	return "", false
}

// ErrMalformed is wrapped by the errors of Parse and ParseStructuredData.
var ErrMalformed = errors.New("malformed RFC 5424 message")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Parse parses an RFC 5424 message (what Formatter.Append produces; used
// by tests and the fuzzer, and to check messages a receiver wrote back).
func Parse(b []byte) (Message, error) {
	var m Message
	if len(b) < 1 || b[0] != '<' {
		return m, malformed("no '<' at the start")
	}
	i := 1
	for i < len(b) && i <= 4 && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	if i == 1 || i > 4 || i >= len(b) || b[i] != '>' {
		return m, malformed("bad PRI")
	}
	pri, _ := strconv.Atoi(string(b[1:i]))
	if pri > 191 {
		return m, malformed("PRI %d out of range", pri)
	}
	m.Priority = pri
	b = b[i+1:]
	if len(b) < 2 || b[0] != '1' || b[1] != ' ' {
		return m, malformed("version is not 1")
	}
	m.Version = 1
	b = b[2:]
	var fields [5]string
	limits := [5]int{64, maxHostname, maxAppName, maxProcID, maxMsgID}
	for k := range fields {
		j := bytes.IndexByte(b, ' ')
		if j <= 0 {
			return m, malformed("header field %d missing", k+2)
		}
		if j > limits[k] {
			return m, malformed("header field %d too long", k+2)
		}
		for _, c := range b[:j] {
			if !printUSASCII(c) {
				return m, malformed("header field %d has byte %#x", k+2, c)
			}
		}
		fields[k] = string(b[:j])
		b = b[j+1:]
	}
	m.Timestamp, m.Hostname, m.AppName, m.ProcID, m.MsgID = fields[0], fields[1], fields[2], fields[3], fields[4]
	sd, rest, err := parseSD(b)
	if err != nil {
		return m, err
	}
	m.SD = sd
	if len(rest) > 0 {
		if rest[0] != ' ' {
			return m, malformed("no space after structured data")
		}
		rest = rest[1:]
		if bytes.HasPrefix(rest, utf8BOM) {
			m.BOM = true
			rest = rest[len(utf8BOM):]
		}
		m.Msg = rest
	}
	return m, nil
}

// ParseStructuredData parses STRUCTURED-DATA ("-" or one or more
// elements) that makes up all of b, such as rsyslog's %structured-data%.
func ParseStructuredData(b []byte) ([]SDElement, error) {
	sd, rest, err := parseSD(b)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, malformed("%d bytes after structured data", len(rest))
	}
	return sd, nil
}

func parseSD(b []byte) ([]SDElement, []byte, error) {
	if len(b) == 0 {
		return nil, nil, malformed("structured data missing")
	}
	if b[0] == '-' {
		return nil, b[1:], nil
	}
	var out []SDElement
	for len(b) > 0 && b[0] == '[' {
		b = b[1:]
		var e SDElement
		var err error
		e.ID, b, err = parseSDName(b)
		if err != nil {
			return nil, nil, err
		}
		for {
			if len(b) == 0 {
				return nil, nil, malformed("unterminated SD element")
			}
			if b[0] == ']' {
				b = b[1:]
				break
			}
			if b[0] != ' ' {
				return nil, nil, malformed("expected ' ' or ']' in SD element, got %q", b[0])
			}
			b = b[1:]
			var p SDParam
			p.Name, b, err = parseSDName(b)
			if err != nil {
				return nil, nil, err
			}
			if len(b) < 2 || b[0] != '=' || b[1] != '"' {
				return nil, nil, malformed("expected =\" after SD param name")
			}
			b = b[2:]
			var val []byte
			closed := false
			for len(b) > 0 {
				c := b[0]
				if c == '\\' && len(b) > 1 && (b[1] == '"' || b[1] == '\\' || b[1] == ']') {
					val = append(val, b[1])
					b = b[2:]
					continue
				}
				if c == '"' {
					b = b[1:]
					closed = true
					break
				}
				if c == ']' {
					return nil, nil, malformed("unescaped ']' in SD param value")
				}
				val = append(val, c)
				b = b[1:]
			}
			if !closed {
				return nil, nil, malformed("unterminated SD param value")
			}
			if !utf8.Valid(val) {
				return nil, nil, malformed("SD param value is not UTF-8")
			}
			p.Value = string(val)
			e.Params = append(e.Params, p)
		}
		out = append(out, e)
	}
	if out == nil {
		return nil, nil, malformed("structured data is neither '-' nor '['")
	}
	return out, b, nil
}

func parseSDName(b []byte) (string, []byte, error) {
	i := 0
	for i < len(b) && sdNameChar(b[i]) {
		i++
	}
	if i == 0 || i > maxSDName {
		return "", nil, malformed("bad SD-NAME")
	}
	return string(b[:i]), b[i:], nil
}
