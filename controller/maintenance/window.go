package maintenance

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a weekly maintenance window: the times at which a campaign may
// start work on a new node. Nodes already in progress finish whatever the
// window says. The zero Window is always open.
//
// Grammar (case-insensitive; spaces around "-" are allowed):
//
//	window = range { "," range } [ zone ]
//	range  = [ days ] HH:MM "-" HH:MM
//	days   = day | day "-" day          a range wraps: Fri-Mon is Fri, Sat, Sun, Mon
//	day    = Mon | Tue | Wed | Thu | Fri | Sat | Sun   (or the full English name)
//	zone   = UTC | an IANA name such as Europe/Berlin, once, after the last range
//
// A range without days is every day. Times are wall-clock times in the zone,
// UTC when none is named; the end may be 24:00. An end earlier than the start
// runs over midnight into the next day: "Mon-Fri 22:00-04:00" opens Monday
// 22:00 and closes Tuesday 04:00, and so on until Saturday 04:00. The days
// name the day a range opens. A range whose start equals its end never opens
// and is refused. A named zone needs the tz database on the controller host
// (or time/tzdata linked into the binary).
//
// Examples: "Sat 02:00-06:00", "Mon-Fri 22:00-04:00",
// "Sat-Sun 01:00-05:00, Wed 03:00-04:00 Europe/Berlin", "02:00-05:00".
type Window struct {
	text  string
	loc   *time.Location
	spans []span
}

// span is one opening: it starts on day at start minutes past midnight and
// lasts until end minutes past that midnight (end > 1440 runs into the next
// day).
type span struct {
	day        time.Weekday
	start, end int
}

// ParseWindow parses a window in the grammar documented on Window. The empty
// string gives the zero Window, which is always open.
func ParseWindow(s string) (Window, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return Window{}, nil
	}
	w := Window{text: text, loc: time.UTC}
	parts := strings.Split(joinDashes(text), ",")
	for i, part := range parts {
		fields := strings.Fields(part)
		if len(fields) == 0 {
			return Window{}, fmt.Errorf("window %q: empty range between commas", text)
		}
		last := i == len(parts)-1
		if last && len(fields) >= 2 && !looksLikeTimes(fields[len(fields)-1]) {
			zone := fields[len(fields)-1]
			fields = fields[:len(fields)-1]
			loc, err := loadZone(zone)
			if err != nil {
				return Window{}, fmt.Errorf("window %q: time zone %q: %w (use UTC or an IANA name such as Europe/Berlin)", text, zone, err)
			}
			w.loc = loc
		}
		if len(fields) > 2 {
			return Window{}, fmt.Errorf("window %q: range %q: want [DAYS] HH:MM-HH:MM, such as \"Sat 02:00-06:00\" (a time zone comes once, after the last range)", text, strings.TrimSpace(part))
		}
		days := allDays
		times := fields[0]
		if len(fields) == 2 {
			var err error
			if days, err = parseDays(fields[0]); err != nil {
				return Window{}, fmt.Errorf("window %q: %w", text, err)
			}
			times = fields[1]
		} else if !looksLikeTimes(times) {
			return Window{}, fmt.Errorf("window %q: range %q has no times: want [DAYS] HH:MM-HH:MM", text, strings.TrimSpace(part))
		}
		start, end, err := parseTimes(times)
		if err != nil {
			return Window{}, fmt.Errorf("window %q: %w", text, err)
		}
		for _, d := range days {
			w.spans = append(w.spans, span{day: d, start: start, end: end})
		}
	}
	return w, nil
}

var allDays = []time.Weekday{time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday, time.Saturday, time.Sunday}

// joinDashes removes blanks around '-' so "Mon - Fri 02:00 - 04:00" reads
// as "Mon-Fri 02:00-04:00".
func joinDashes(s string) string {
	s = strings.ReplaceAll(s, "\t", " ")
	for {
		t := strings.ReplaceAll(strings.ReplaceAll(s, " -", "-"), "- ", "-")
		if t == s {
			return s
		}
		s = t
	}
}

// looksLikeTimes tells times ("02:00-06:00", or a mistyped "0200-0600")
// from a zone name, which never starts with a digit.
func looksLikeTimes(f string) bool { return f[0] >= '0' && f[0] <= '9' }

func loadZone(name string) (*time.Location, error) {
	if strings.EqualFold(name, "UTC") || strings.EqualFold(name, "Z") {
		return time.UTC, nil
	}
	if strings.EqualFold(name, "Local") {
		return nil, fmt.Errorf("the controller's local zone depends on the host; name the zone")
	}
	return time.LoadLocation(name)
}

var dayNames = map[string]time.Weekday{
	"mon": time.Monday, "monday": time.Monday,
	"tue": time.Tuesday, "tuesday": time.Tuesday,
	"wed": time.Wednesday, "wednesday": time.Wednesday,
	"thu": time.Thursday, "thursday": time.Thursday,
	"fri": time.Friday, "friday": time.Friday,
	"sat": time.Saturday, "saturday": time.Saturday,
	"sun": time.Sunday, "sunday": time.Sunday,
}

func parseDay(s string) (time.Weekday, error) {
	d, ok := dayNames[strings.ToLower(s)]
	if !ok {
		return 0, fmt.Errorf("unknown day %q: want Mon, Tue, Wed, Thu, Fri, Sat or Sun", s)
	}
	return d, nil
}

func parseDays(s string) ([]time.Weekday, error) {
	from, to, isRange := strings.Cut(s, "-")
	first, err := parseDay(from)
	if err != nil {
		return nil, err
	}
	if !isRange {
		return []time.Weekday{first}, nil
	}
	last, err := parseDay(to)
	if err != nil {
		return nil, err
	}
	days := []time.Weekday{first}
	for d := first; d != last; {
		d = (d + 1) % 7
		days = append(days, d)
	}
	return days, nil
}

func parseTimes(s string) (start, end int, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("times %q: want HH:MM-HH:MM", s)
	}
	if start, err = parseClock(a, false); err != nil {
		return 0, 0, err
	}
	if end, err = parseClock(b, true); err != nil {
		return 0, 0, err
	}
	if start == end {
		return 0, 0, fmt.Errorf("times %q: the window never opens (start equals end); for a whole day write 00:00-24:00", s)
	}
	if end < start {
		end += 24 * 60 // over midnight
	}
	return start, end, nil
}

func parseClock(s string, isEnd bool) (int, error) {
	hh, mm, ok := strings.Cut(s, ":")
	if !ok || len(hh) == 0 || len(hh) > 2 || len(mm) != 2 {
		return 0, fmt.Errorf("time %q: want HH:MM, such as 02:00", s)
	}
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	if err1 != nil || err2 != nil || h < 0 || m < 0 {
		return 0, fmt.Errorf("time %q: want HH:MM, such as 02:00", s)
	}
	if h == 24 && m == 0 && isEnd {
		return 24 * 60, nil
	}
	if h > 23 || m > 59 {
		return 0, fmt.Errorf("time %q: hours run 00-23 and minutes 00-59 (24:00 only as an end)", s)
	}
	return h*60 + m, nil
}

// IsZero reports whether w is the zero Window (always open).
func (w Window) IsZero() bool { return len(w.spans) == 0 }

// String returns the window as it was written ("" for the zero Window).
func (w Window) String() string { return w.text }

// Location returns the zone the window's times are in (UTC by default).
func (w Window) Location() *time.Location {
	if w.loc == nil {
		return time.UTC
	}
	return w.loc
}

// Open reports whether t falls inside the window.
func (w Window) Open(t time.Time) bool {
	if w.IsZero() {
		return true
	}
	lt := t.In(w.Location())
	day, minute := lt.Weekday(), lt.Hour()*60+lt.Minute()
	for _, s := range w.spans {
		if day == s.day && minute >= s.start && minute < s.end {
			return true
		}
		if s.end > 24*60 && day == (s.day+1)%7 && minute < s.end-24*60 {
			return true
		}
	}
	return false
}

// NextOpen returns t when the window is open at t, and otherwise the first
// instant after t at which it opens.
func (w Window) NextOpen(t time.Time) time.Time {
	if w.Open(t) {
		return t
	}
	loc := w.Location()
	lt := t.In(loc)
	var best time.Time
	for d := 0; d <= 7; d++ {
		day := time.Date(lt.Year(), lt.Month(), lt.Day()+d, 0, 0, 0, 0, loc)
		for _, s := range w.spans {
			if s.day != day.Weekday() {
				continue
			}
			c := time.Date(day.Year(), day.Month(), day.Day(), s.start/60, s.start%60, 0, 0, loc)
			if c.After(t) && (best.IsZero() || c.Before(best)) {
				best = c
			}
		}
		if !best.IsZero() {
			break
		}
	}
	return best
}

// MarshalJSON writes the window as its text.
func (w Window) MarshalJSON() ([]byte, error) { return json.Marshal(w.text) }

// UnmarshalJSON parses the window's text.
func (w *Window) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("window: %w", err)
	}
	p, err := ParseWindow(s)
	if err != nil {
		return err
	}
	*w = p
	return nil
}
