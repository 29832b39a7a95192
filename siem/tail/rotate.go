package tail

import (
	"cmp"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// sibling is an open file of the path's rotation family.
type sibling struct {
	name  string // base name; "" if not in the last listing (deleted, or renamed to a name the listing missed)
	s     *source
	mtime time.Time
	size  int64
}

func (sb *sibling) key() fileKey { return fileKey{mtime: sb.mtime, name: sb.name} }

func (sb *sibling) is(s *source) bool { return s != nil && sb.s.dev == s.dev && sb.s.ino == s.ino }

// compressedExt are suffixes of rotated files that are not plain text.
var compressedExt = []string{".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".lzo", ".z", ".zip", ".br", ".sz", ".7z"}

func isCompressed(suffix string) bool {
	suffix = strings.ToLower(suffix)
	for _, ext := range compressedExt {
		if strings.HasSuffix(suffix, ext) {
			return true
		}
	}
	return false
}

// scanOnce opens the regular files in the path's directory whose names
// start with its base name, the path itself included, compressed ones
// excluded, in name order.
func (f *Follower) scanOnce() ([]sibling, error) {
	des, err := os.ReadDir(f.dir)
	if err != nil {
		return nil, err
	}
	var out []sibling
	for _, de := range des {
		name := de.Name()
		if !strings.HasPrefix(name, f.base) || isCompressed(name[len(f.base):]) {
			continue
		}
		if t := de.Type(); t&fs.ModeType != 0 && t&fs.ModeSymlink == 0 {
			continue // directory, device, FIFO, socket
		}
		s, fi, err := openSource(filepath.Join(f.dir, name))
		if err != nil {
			continue
		}
		out = append(out, sibling{name: name, s: s, mtime: fi.ModTime(), size: fi.Size()})
	}
	return out, nil
}

// maxScanPasses bounds the listings of one scan.
const maxScanPasses = 50

// scanSiblings opens the siblings. Files are opened while listing, so one
// that is renamed afterwards is still held; a listing racing a rotation
// that renames several files (audit.log.1 -> .2 -> ...) can miss a file,
// so the directory is listed until two listings in a row agree, and every
// file seen in any listing is kept. Names come from the last listing.
func (f *Follower) scanSiblings() []*sibling {
	type id struct{ dev, ino uint64 }
	seen := map[id]*sibling{}
	var order []*sibling
	var prev []sibling
	for range maxScanPasses {
		cur, err := f.scanOnce()
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				f.log.Warn("tail: cannot list directory", "dir", f.dir, "err", err)
			}
			break
		}
		names := make(map[id]string, len(cur))
		for i := range cur {
			c := cur[i]
			k := id{c.s.dev, c.s.ino}
			names[k] = c.name
			if old, ok := seen[k]; ok {
				c.s.close()
				old.mtime, old.size = c.mtime, c.size
				continue
			}
			sb := c
			seen[k] = &sb
			order = append(order, &sb)
		}
		for k, sb := range seen {
			sb.name = names[k]
		}
		stable := prev != nil && slices.EqualFunc(prev, cur, func(a, b sibling) bool {
			return a.name == b.name && a.s.dev == b.s.dev && a.s.ino == b.s.ino
		})
		if stable {
			break
		}
		prev = cur
	}
	return order
}

func closeSiblings(sibs []*sibling) {
	for _, sb := range sibs {
		if sb != nil {
			sb.s.close()
		}
	}
}

// fileKey orders the files of one rotation family by age.
type fileKey struct {
	mtime time.Time
	name  string // base name; "" when unknown (the file was deleted)
}

// older reports whether a is older than b: earlier modification time, or
// the same time and a name that rotation gives to older files. With an
// unknown name a tie is not older either way.
func (f *Follower) older(a, b fileKey) bool {
	if !a.mtime.Equal(b.mtime) {
		return a.mtime.Before(b.mtime)
	}
	if a.name == "" || b.name == "" || a.name == b.name {
		return false
	}
	return olderName(a.name, b.name, f.base)
}

// olderName orders names of one rotation family: the live name is the
// newest; numbered ones (base.N) are older the larger N; others (dateext:
// base-20240101) are older the smaller they sort.
func olderName(a, b, base string) bool {
	if b == base {
		return true
	}
	if a == base {
		return false
	}
	na, oka := rotationNumber(a[len(base):])
	nb, okb := rotationNumber(b[len(base):])
	if oka && okb {
		return na > nb
	}
	return a < b
}

func rotationNumber(suffix string) (uint64, bool) {
	if len(suffix) < 2 || suffix[0] != '.' {
		return 0, false
	}
	n, err := strconv.ParseUint(suffix[1:], 10, 64)
	return n, err == nil
}

func modKey(s *source) (fileKey, error) {
	fi, err := s.f.Stat()
	if err != nil {
		return fileKey{}, err
	}
	return fileKey{mtime: fi.ModTime()}, nil
}

// successors returns the siblings newer than x and, when n is not nil, not
// newer than n (x and n excluded), opened, oldest first: the files rotated
// after x that the follower has not seen.
func (f *Follower) successors(x, n *source) []*source {
	xk, err := modKey(x)
	if err != nil {
		f.log.Warn("tail: cannot stat file", "path", x.name, "err", err)
		return nil
	}
	var nk fileKey
	if n != nil {
		if nk, err = modKey(n); err != nil {
			f.log.Warn("tail: cannot stat file", "path", n.name, "err", err)
			return nil
		}
	}
	sibs := f.scanSiblings()
	for i, sb := range sibs {
		switch {
		case sb.is(x):
			xk.name = sb.name
		case sb.is(n):
			nk.name = sb.name
		default:
			continue
		}
		sb.s.close()
		sibs[i] = nil
	}
	var cands []*sibling
	for i, sb := range sibs {
		if sb == nil {
			continue
		}
		k := sb.key()
		if f.older(k, xk) || (n != nil && f.older(nk, k)) {
			continue
		}
		cands = append(cands, sb)
		sibs[i] = nil
	}
	closeSiblings(sibs)
	f.sortByAge(cands)
	out := make([]*source, len(cands))
	for i, sb := range cands {
		out[i] = sb.s
	}
	return out
}

func (f *Follower) sortByAge(sibs []*sibling) {
	slices.SortStableFunc(sibs, func(a, b *sibling) int {
		switch {
		case f.older(a.key(), b.key()):
			return -1
		case f.older(b.key(), a.key()):
			return 1
		}
		return cmp.Compare(a.name, b.name)
	})
}

// resolve finds the file of the start checkpoint: by device+inode and
// fingerprint at the path or among its siblings, else by full-length
// fingerprint alone (a copy, as copytruncate makes). Nil: not found, a
// warning was logged, start the current file at 0.
func (f *Follower) resolve(cp Checkpoint, sum [32]byte) *source {
	scratch := f.scratchN(cp.FingerprintLen)
	sibs := f.scanSiblings()
	defer func() { closeSiblings(sibs) }()
	for i, sb := range sibs {
		if sb.s.dev != cp.Dev || sb.s.ino != cp.Inode {
			continue
		}
		ok, err := prefixHas(sb.s.f, cp.FingerprintLen, sum, scratch)
		if err != nil || !ok {
			f.log.Warn("tail: checkpoint's device and inode now hold a different file (inode reused, or rewritten in place); not resuming in it",
				"path", sb.s.name, "inode", cp.Inode, "err", err)
			break
		}
		sibs[i] = nil
		return f.resumeIn(sb, cp, sum)
	}
	if cp.FingerprintLen > 0 && cp.FingerprintLen >= f.o.FingerprintBytes {
		f.sortByAge(sibs)
		for i, sb := range sibs {
			if sb.size < int64(cp.FingerprintLen) {
				continue
			}
			if ok, err := prefixHas(sb.s.f, cp.FingerprintLen, sum, scratch); err != nil || !ok {
				continue
			}
			f.log.Info("tail: checkpoint's file found by fingerprint under another inode (a copy, e.g. copytruncate)",
				"path", sb.s.name, "checkpoint_inode", cp.Inode, "inode", sb.s.ino)
			sibs[i] = nil
			return f.resumeIn(sb, cp, sum)
		}
	}
	f.log.Warn("tail: checkpoint's file not found; starting the current file at offset 0, events written after the checkpoint may have been lost",
		"path", f.o.Path, "dev", cp.Dev, "inode", cp.Inode, "offset", cp.Offset)
	return nil
}

func (f *Follower) resumeIn(sb *sibling, cp Checkpoint, sum [32]byte) *source {
	s := sb.s
	s.fpLen, s.fpSum, s.fpHex = cp.FingerprintLen, sum, hex.EncodeToString(sum[:])
	s.readOff = cp.Offset
	if sb.size < cp.Offset {
		f.log.Warn("tail: checkpoint offset is past the end of its file; reading the file from offset 0",
			"path", s.name, "inode", s.ino, "offset", cp.Offset, "size", sb.size)
		s.readOff = 0
	}
	f.log.Info("tail: resuming", "path", s.name, "inode", s.ino, "offset", s.readOff)
	return s
}
