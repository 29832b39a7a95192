package tail

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

var (
	emptySum = sha256.Sum256(nil)
	emptyHex = hex.EncodeToString(emptySum[:])
)

// source is one open file and the identity it had when it was opened.
type source struct {
	f        *os.File
	name     string // path it was opened by (for logs; it may have moved)
	dev, ino uint64
	fpLen    int      // bytes covered by fpSum
	fpSum    [32]byte // SHA-256 of the first fpLen bytes
	fpHex    string   // hex of fpSum, shared by every Checkpoint
	readOff  int64    // file offset of the next byte to read into the buffer
}

// openSource opens a regular file and records its device and inode.
func openSource(path string) (*source, os.FileInfo, error) {
	fh, err := os.OpenFile(path, openFlags, 0) // non-blocking: a FIFO must not hang the open
	if err != nil {
		return nil, nil, err
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		fh.Close()
		return nil, nil, fmt.Errorf("tail: %s is not a regular file", path)
	}
	dev, ino, ok := fileID(fi)
	if !ok {
		fh.Close()
		return nil, nil, errors.New("tail: device and inode numbers are not available on this platform")
	}
	return &source{f: fh, name: path, dev: dev, ino: ino, fpSum: emptySum, fpHex: emptyHex}, fi, nil
}

func (s *source) close() {
	if s != nil && s.f != nil {
		s.f.Close()
	}
}

func (s *source) checkpoint(off int64) Checkpoint {
	return Checkpoint{Dev: s.dev, Inode: s.ino, FingerprintLen: s.fpLen, Fingerprint: s.fpHex, Offset: off}
}

// prefixMatches reports whether the file's first s.fpLen bytes still hash
// to s.fpSum. scratch must hold s.fpLen bytes.
func (s *source) prefixMatches(scratch []byte) (bool, error) {
	return prefixHas(s.f, s.fpLen, s.fpSum, scratch)
}

// extendFingerprint checks the current fingerprint and extends it to cover
// up to limit bytes (fewer if the file is shorter). It reports false if the
// file's first bytes no longer match. scratch must hold max(limit, s.fpLen)
// bytes.
func (s *source) extendFingerprint(limit int, scratch []byte) (bool, error) {
	n, err := readPrefix(s.f, scratch[:max(limit, s.fpLen)])
	if err != nil {
		return false, err
	}
	if n < s.fpLen || sha256.Sum256(scratch[:s.fpLen]) != s.fpSum {
		return false, nil
	}
	if n > s.fpLen {
		s.fpLen = n
		s.fpSum = sha256.Sum256(scratch[:n])
		s.fpHex = hex.EncodeToString(s.fpSum[:])
	}
	return true, nil
}

// readPrefix reads the first len(buf) bytes of r, fewer at end of file.
func readPrefix(r io.ReaderAt, buf []byte) (int, error) {
	n, err := r.ReadAt(buf, 0)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// prefixHas reports whether r is at least n bytes long and its first n bytes
// hash to sum. scratch must hold n bytes (it is grown otherwise).
func prefixHas(r io.ReaderAt, n int, sum [32]byte, scratch []byte) (bool, error) {
	if n == 0 {
		return sum == emptySum, nil
	}
	if len(scratch) < n {
		scratch = make([]byte, n)
	}
	got, err := readPrefix(r, scratch[:n])
	if err != nil {
		return false, err
	}
	return got == n && sha256.Sum256(scratch[:n]) == sum, nil
}

// sameFile is the identity function: it reports whether the file r, whose
// device and inode are dev and ino, is the file cp was taken in. Same
// device and inode with a different fingerprint is a different file (the
// inode was reused, or the file was rewritten in place).
func sameFile(cp Checkpoint, dev, ino uint64, r io.ReaderAt) (bool, error) {
	if cp.Dev != dev || cp.Inode != ino {
		return false, nil
	}
	sum, err := cp.sum()
	if err != nil {
		return false, err
	}
	return prefixHas(r, cp.FingerprintLen, sum, nil)
}

// Matches reports whether f is the file the checkpoint was taken in: same
// device and inode, and its first FingerprintLen bytes hash to Fingerprint.
func (c Checkpoint) Matches(f *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	dev, ino, ok := fileID(fi)
	if !ok {
		return false, errors.New("tail: device and inode numbers are not available on this platform")
	}
	return sameFile(c, dev, ino, f)
}

// sum decodes the fingerprint. An empty fingerprint with FingerprintLen 0 is
// the hash of nothing.
func (c Checkpoint) sum() ([32]byte, error) {
	var sum [32]byte
	if c.Fingerprint == "" && c.FingerprintLen == 0 {
		return emptySum, nil
	}
	b, err := hex.DecodeString(strings.TrimSpace(c.Fingerprint))
	if err != nil || len(b) != len(sum) || c.FingerprintLen < 0 {
		return sum, fmt.Errorf("tail: invalid checkpoint fingerprint %q", c.Fingerprint)
	}
	copy(sum[:], b)
	return sum, nil
}
