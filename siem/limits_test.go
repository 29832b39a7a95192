package siem

import "testing"

func TestSpoolLimits(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name     string
		maxBytes int64

		entry     int // EntryFits(entry) == entryFits
		entryFits bool

		entries, queues int // BatchFull(entries, bytes, queues) == full
		bytes           int64
		full            bool

		maxLine int64 // MaxLineBytes()
	}{
		{name: "empty batch", maxBytes: mib, entry: 1, entryFits: true, maxLine: mib / 16},
		{name: "entry of the whole cap", maxBytes: mib, entry: mib, entryFits: true, maxLine: mib / 16},
		{name: "entry past the cap", maxBytes: mib, entry: mib + 1, entryFits: false, maxLine: mib / 16},
		// The old 1/8 filter dropped these.
		{name: "entry just over an eighth", maxBytes: mib, entry: mib/8 + 1, entryFits: true, maxLine: mib / 16},
		{name: "entry of half the cap", maxBytes: mib, entry: mib / 2, entryFits: true, maxLine: mib / 16},

		{name: "one event short, one queue", maxBytes: mib, entry: 1, entryFits: true, entries: MaxBatchEvents - 1, queues: 1, maxLine: mib / 16},
		{name: "MaxBatchEvents events, one queue", maxBytes: mib, entry: 1, entryFits: true, entries: MaxBatchEvents, queues: 1, full: true, maxLine: mib / 16},
		{name: "MaxBatchEvents entries for two queues", maxBytes: mib, entry: 1, entryFits: true, entries: MaxBatchEvents, queues: 2, maxLine: mib / 16},
		{name: "MaxBatchEvents events for two queues", maxBytes: mib, entry: 1, entryFits: true, entries: 2 * MaxBatchEvents, queues: 2, full: true, maxLine: mib / 16},
		{name: "no queue counts as one", maxBytes: mib, entry: 1, entryFits: true, entries: MaxBatchEvents, queues: 0, full: true, maxLine: mib / 16},
		{name: "bytes under an eighth", maxBytes: mib, entry: 1, entryFits: true, entries: 1, queues: 1, bytes: mib/8 - 1, maxLine: mib / 16},
		{name: "bytes of an eighth", maxBytes: mib, entry: 1, entryFits: true, entries: 1, queues: 1, bytes: mib / 8, full: true, maxLine: mib / 16},

		{name: "line of a cap not a multiple of 16", maxBytes: mib + 15, entry: mib + 15, entryFits: true, maxLine: mib / 16},
		{name: "default cap", maxBytes: 0, entry: DefaultSpoolBytes, entryFits: true, entries: 1, queues: 1, bytes: DefaultSpoolBytes / 8, full: true, maxLine: DefaultSpoolBytes / 16},
		{name: "default cap, entry past it", maxBytes: 0, entry: DefaultSpoolBytes + 1, entryFits: false, entries: 1, queues: 1, bytes: mib, maxLine: DefaultSpoolBytes / 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := SpoolLimits{MaxBytes: tc.maxBytes}
			if got := l.EntryFits(tc.entry); got != tc.entryFits {
				t.Errorf("EntryFits(%d) = %v, want %v", tc.entry, got, tc.entryFits)
			}
			if got := l.BatchFull(tc.entries, tc.bytes, tc.queues); got != tc.full {
				t.Errorf("BatchFull(%d, %d, %d) = %v, want %v", tc.entries, tc.bytes, tc.queues, got, tc.full)
			}
			if got := l.MaxLineBytes(); got != tc.maxLine {
				t.Errorf("MaxLineBytes() = %d, want %d", got, tc.maxLine)
			}
		})
	}
}

// The rule and Validate agree: a line of MaxLineBytes is accepted, one byte
// more is not.
func TestSpoolLimitsMaxLineValidates(t *testing.T) {
	for _, spoolBytes := range []int64{0, 1 << 20, 1<<20 + 15, 64 << 20} {
		l := SpoolLimits{MaxBytes: spoolBytes}
		for _, line := range []int64{l.MaxLineBytes(), l.MaxLineBytes() + 1} {
			c := Config{
				Sources: []SourceConfig{{Path: "/var/log/audit/audit.log", Tag: "audit", MaxLineBytes: int(line)}},
				Outputs: []OutputConfig{{Name: "o1", Type: OutputSyslog, Address: "siem:6514"}},
				Spool:   SpoolConfig{MaxBytes: spoolBytes},
			}
			err := c.Validate()
			if ok := line <= l.MaxLineBytes(); (err == nil) != ok {
				t.Errorf("spool %d, max_line_bytes %d: Validate() = %v", spoolBytes, line, err)
			}
		}
	}
}
