package tail

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzCheckpoint: whatever checkpoint the spool hands back (it is read
// from a file that may be damaged or from an older build), New refuses it
// or the follower reads one contiguous tail of the file to its end, each
// checkpoint past the one before, never a byte twice and never past EOF.
// A checkpoint of this very file at a line boundary resumes exactly there.
func FuzzCheckpoint(f *testing.F) {
	content := []byte("first line\nsecond line\n\nfourth line, a little longer than the others\nfifth\n")
	f.Add(true, true, 11, "", int64(11)) // a valid checkpoint after line 1
	f.Add(true, true, len(content), "", int64(len(content)))
	f.Add(true, false, 11, "00ff", int64(23)) // the right file, a wrong fingerprint
	f.Add(false, true, 5, "", int64(3))       // another file's identity
	f.Add(true, true, 0, "", int64(1<<40))    // past the end
	f.Add(true, true, 2000, "zz", int64(-1))
	f.Fuzz(func(t *testing.T, same, validFP bool, fpLen int, fp string, offset int64) {
		path := filepath.Join(t.TempDir(), "audit.log")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		dev, ino, _ := fileID(fi)
		cp := Checkpoint{Dev: dev + 1, Inode: ino, FingerprintLen: fpLen, Fingerprint: fp, Offset: offset}
		if same {
			cp.Dev = dev
		}
		if validFP && fpLen >= 0 {
			n := min(fpLen, len(content), DefaultFingerprintBytes)
			sum := sha256.Sum256(content[:n])
			cp.FingerprintLen, cp.Fingerprint = n, hex.EncodeToString(sum[:])
		}
		fl, err := New(Options{Path: path, Start: &cp, PollInterval: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return // refused: fine, the caller starts over
		}
		defer fl.Close()
		// A last line, written after New: the follower reads up to it
		// (and a checkpoint at the end still gets a line). The file is
		// opened at the first Next, so a checkpoint past the end of content
		// that lands exactly at the end of content+END is a valid position
		// at EOF by then, with nothing after it: one more line gives the
		// follower something to read, so the loop below cannot wait forever.
		end := "END\n"
		if offset == int64(len(content)+len(end)) {
			end += "MORE\n"
		}
		w, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString(end)
		w.Close()
		size := int64(len(content) + len(end))
		all := append(append([]byte(nil), content...), end...)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var got []byte
		last := int64(-1)
		for last != size {
			l, err := fl.Next(ctx)
			if err != nil {
				t.Fatalf("checkpoint %+v: Next: %v after reading %q", cp, err, got)
			}
			if l.Checkpoint.Offset <= last || l.Checkpoint.Offset > size {
				t.Fatalf("checkpoint %+v: line %q ends at %d after %d (file of %d bytes)", cp, l.Data, l.Checkpoint.Offset, last, size)
			}
			last = l.Checkpoint.Offset
			got = append(got, l.Data...)
			if !l.Partial {
				got = append(got, '\n')
			}
		}
		if !bytes.HasSuffix(all, got) {
			t.Fatalf("checkpoint %+v: read %q, not a tail of the file", cp, got)
		}
		boundary := offset == 0 || offset > 0 && offset <= int64(len(content)) && content[offset-1] == '\n'
		if same && validFP && fpLen >= 0 && boundary && size-int64(len(got)) != offset {
			t.Fatalf("valid checkpoint %+v: resumed at %d, want %d", cp, size-int64(len(got)), offset)
		}
	})
}
