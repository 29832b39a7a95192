package maintenance

import (
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zone tests do not depend on the host's tz database
)

func at(s string) time.Time {
	t, err := time.Parse("Mon 2006-01-02 15:04 MST", s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

func TestWindowOpen(t *testing.T) {
	for _, tc := range []struct {
		window string
		open   []string
		closed []string
	}{
		{"Sat 02:00-06:00",
			[]string{"Sat 2026-03-07 02:00 UTC", "Sat 2026-03-07 05:59 UTC"},
			[]string{"Sat 2026-03-07 01:59 UTC", "Sat 2026-03-07 06:00 UTC", "Sun 2026-03-08 03:00 UTC", "Fri 2026-03-06 03:00 UTC"}},
		{"Mon-Fri 22:00-04:00", // over midnight: Fri 22:00 runs into Saturday
			[]string{"Mon 2026-03-02 22:00 UTC", "Tue 2026-03-03 03:59 UTC", "Sat 2026-03-07 03:00 UTC", "Wed 2026-03-04 23:30 UTC"},
			[]string{"Mon 2026-03-02 03:00 UTC", "Tue 2026-03-03 04:00 UTC", "Sat 2026-03-07 22:30 UTC", "Sun 2026-03-08 23:00 UTC", "Mon 2026-03-02 21:59 UTC"}},
		{"Fri-Mon 01:00-02:00", // a day range wraps the week
			[]string{"Sun 2026-03-08 01:30 UTC", "Mon 2026-03-09 01:00 UTC", "Fri 2026-03-06 01:59 UTC"},
			[]string{"Tue 2026-03-10 01:30 UTC", "Thu 2026-03-05 01:30 UTC"}},
		{"sat 02:00 - 06:00, Wednesday 03:00-04:00",
			[]string{"Sat 2026-03-07 02:30 UTC", "Wed 2026-03-04 03:30 UTC"},
			[]string{"Wed 2026-03-04 02:30 UTC"}},
		{"02:00-05:00", // every day
			[]string{"Mon 2026-03-02 02:00 UTC", "Thu 2026-03-05 04:59 UTC"},
			[]string{"Thu 2026-03-05 05:00 UTC"}},
		{"Mon 00:00-24:00",
			[]string{"Mon 2026-03-02 00:00 UTC", "Mon 2026-03-02 23:59 UTC"},
			[]string{"Tue 2026-03-03 00:00 UTC", "Sun 2026-03-01 23:59 UTC"}},
		{"Sat 02:00-06:00 Europe/Berlin", // CET, UTC+1 in early March
			[]string{"Sat 2026-03-07 01:00 UTC", "Sat 2026-03-07 04:59 UTC"},
			[]string{"Sat 2026-03-07 05:00 UTC", "Sat 2026-03-07 00:59 UTC"}},
		{"Sat 02:00-06:00 UTC",
			[]string{"Sat 2026-03-07 02:00 UTC"},
			[]string{"Sat 2026-03-07 01:00 UTC"}},
	} {
		w, err := ParseWindow(tc.window)
		if err != nil {
			t.Errorf("ParseWindow(%q): %v", tc.window, err)
			continue
		}
		for _, s := range tc.open {
			if !w.Open(at(s)) {
				t.Errorf("%q: closed at %s, want open", tc.window, s)
			}
		}
		for _, s := range tc.closed {
			if w.Open(at(s)) {
				t.Errorf("%q: open at %s, want closed", tc.window, s)
			}
		}
	}
}

func TestWindowNextOpen(t *testing.T) {
	for _, tc := range []struct {
		window, from, want string
	}{
		{"Sat 02:00-06:00", "Sat 2026-03-07 06:00 UTC", "Sat 2026-03-14 02:00 UTC"},
		{"Sat 02:00-06:00", "Sat 2026-03-07 03:00 UTC", "Sat 2026-03-07 03:00 UTC"}, // open now
		{"Sat 02:00-06:00", "Thu 2026-03-05 10:00 UTC", "Sat 2026-03-07 02:00 UTC"},
		{"Mon-Fri 22:00-04:00", "Sat 2026-03-07 05:00 UTC", "Mon 2026-03-09 22:00 UTC"},
		{"Mon-Fri 22:00-04:00, Sun 12:00-13:00", "Sat 2026-03-07 05:00 UTC", "Sun 2026-03-08 12:00 UTC"},
		{"Sat 02:00-06:00 Europe/Berlin", "Sat 2026-03-07 06:00 UTC", "Sat 2026-03-14 01:00 UTC"},
		// Berlin moves to summer time at 02:00 on 29 March: 02:00 does not
		// exist that night, the window opens at the first minute that does.
		{"Sun 02:00-04:00 Europe/Berlin", "Sat 2026-03-28 12:00 UTC", "Sun 2026-03-29 01:00 UTC"},
		{"", "Sat 2026-03-07 06:00 UTC", "Sat 2026-03-07 06:00 UTC"},
	} {
		w, err := ParseWindow(tc.window)
		if err != nil {
			t.Fatalf("ParseWindow(%q): %v", tc.window, err)
		}
		if got := w.NextOpen(at(tc.from)); !got.Equal(at(tc.want)) {
			t.Errorf("%q.NextOpen(%s) = %s, want %s", tc.window, tc.from, got.UTC(), tc.want)
		}
		if got := w.NextOpen(at(tc.from)); !w.Open(got) {
			t.Errorf("%q: closed at its NextOpen %s", tc.window, got)
		}
	}
}

func TestZeroWindowIsAlwaysOpen(t *testing.T) {
	now := at("Sat 2026-03-07 02:00 UTC")
	w, err := ParseWindow("  ")
	if err != nil || !w.IsZero() || !w.Open(now) || w.String() != "" {
		t.Errorf("ParseWindow(blank) = %+v, %v", w, err)
	}
	if !(Window{}).Open(now) {
		t.Error("zero Window closed")
	}
}

func TestParseWindowErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Sat 02:00-02:00", `the window never opens (start equals end); for a whole day write 00:00-24:00`},
		{"Sat 25:00-06:00", `time "25:00": hours run 00-23 and minutes 00-59 (24:00 only as an end)`},
		{"Sat 02:60-06:00", `time "02:60": hours run 00-23 and minutes 00-59`},
		{"Sat 24:00-02:00", `time "24:00": hours run 00-23 and minutes 00-59 (24:00 only as an end)`},
		{"Sax 02:00-06:00", `unknown day "Sax": want Mon, Tue, Wed, Thu, Fri, Sat or Sun`},
		{"Mon-Fry 02:00-06:00", `unknown day "Fry"`},
		{"Sat 0200-0600", `time "0200": want HH:MM, such as 02:00`},
		{"Sat 02:00", `times "02:00": want HH:MM-HH:MM`},
		{"Sat", `range "Sat" has no times: want [DAYS] HH:MM-HH:MM`},
		{"Sat Sun 02:00-03:00", `range "Sat Sun 02:00-03:00": want [DAYS] HH:MM-HH:MM`},
		{"Sat 02:00-06:00 UTC, Sun 02:00-03:00", `a time zone comes once, after the last range`},
		{"Sat 02:00-06:00,", `empty range between commas`},
		{"Sat 02:00-06:00 Mars/Olympus", `time zone "Mars/Olympus": unknown time zone Mars/Olympus (use UTC or an IANA name such as Europe/Berlin)`},
		{"Sat 02:00-06:00 Local", `the controller's local zone depends on the host; name the zone`},
	} {
		_, err := ParseWindow(tc.in)
		if err == nil {
			t.Errorf("ParseWindow(%q) accepted it", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "window ") {
			t.Errorf("ParseWindow(%q) = %q; want it to say %q", tc.in, err, tc.want)
		}
	}
}
