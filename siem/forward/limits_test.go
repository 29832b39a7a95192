package forward

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/spool"
)

// siem.SpoolLimits.EntryFits says what the spool itself accepts: an entry
// it refuses as too large is exactly one the rule says does not fit, so the
// forwarder drops no event the spool would have taken.
func TestSpoolLimitsAgreeWithSpool(t *testing.T) {
	const capBytes = 1 << 20
	limits := siem.SpoolLimits{MaxBytes: capBytes}
	for _, drop := range []bool{false, true} {
		sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{MaxBytes: capBytes, DropOldest: drop, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, capBytes / 8, capBytes/8 + 1, capBytes / 2, capBytes - 1, capBytes, capBytes + 1, 2 * capBytes} {
			err := sp.Append([]spool.Entry{{Queue: "q", Data: make([]byte, n)}}, nil)
			if err != nil && !errors.Is(err, spool.ErrTooLarge) {
				t.Fatalf("drop_oldest %v: Append of %d bytes: %v", drop, n, err)
			}
			if tooLarge := errors.Is(err, spool.ErrTooLarge); tooLarge == limits.EntryFits(n) {
				t.Errorf("drop_oldest %v: an entry of %d bytes: spool refuses it as too large: %v, EntryFits: %v", drop, n, tooLarge, limits.EntryFits(n))
			}
			if err := sp.Ack("q", ^uint64(0)); err != nil {
				t.Fatal(err)
			}
		}
		sp.Close()
	}
}
