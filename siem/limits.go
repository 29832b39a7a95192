package siem

// MaxBatchEvents is how many events a source reads into one spool batch
// (one transaction, one fsync) before it writes it.
const MaxBatchEvents = 4096

// SpoolLimits is the one rule that sizes lines, events and batches against
// the spool's cap, spool.max_bytes (MaxBytes; 0 means DefaultSpoolBytes).
// What a source reads is written to the spool as entries, one per event and
// output the event goes to, in batches:
//
//   - An entry fits when it is at most the cap (EntryFits). That is the
//     spool's own limit (it refuses a larger entry with spool.ErrTooLarge):
//     a larger one can never be stored and is dropped, said so; every other
//     one is spooled, in its batch or, when the batch as a whole is larger
//     than the spool, on its own.
//   - A batch is written once it holds MaxBatchEvents events (entries per
//     output) or 1/8 of the cap in entries (BatchFull), so that it stays
//     well under the cap and fits once the outputs drain.
//   - A line may be at most 1/16 of the cap (MaxLineBytes), so a batch holds
//     a line-sized event twice over; a configuration with a longer
//     max_line_bytes is refused.
type SpoolLimits struct {
	MaxBytes int64
}

// Cap is the spool's cap in bytes: MaxBytes, or DefaultSpoolBytes when it
// is not set.
func (l SpoolLimits) Cap() int64 {
	if l.MaxBytes <= 0 {
		return DefaultSpoolBytes
	}
	return l.MaxBytes
}

// EntryFits reports whether the spool can hold an entry of n bytes.
func (l SpoolLimits) EntryFits(n int) bool { return int64(n) <= l.Cap() }

// BatchFull reports whether a batch of entries entries and bytes bytes,
// built for queues output queues, is to be written now.
func (l SpoolLimits) BatchFull(entries int, bytes int64, queues int) bool {
	return entries >= MaxBatchEvents*max(1, queues) || bytes >= l.Cap()/8
}

// MaxLineBytes is the longest max_line_bytes a source may have.
func (l SpoolLimits) MaxLineBytes() int64 { return l.Cap() / 16 }
