// Package tail follows one log file by path (first of all
// /var/log/audit/audit.log) across rotation, without losing or duplicating
// lines, and resumes from a Checkpoint that the caller stores.
//
// # Identity
//
// A file is identified by device and inode plus a fingerprint: the SHA-256 of
// its first FingerprintLen bytes (at most Options.FingerprintBytes, 1 KiB by
// default; shorter while the file is smaller). The fingerprint tells a file
// from a later one that got the same inode after the first was deleted (only
// possible across a restart: while the follower holds a file open its inode
// cannot be reused) and detects a file rewritten in place.
//
// # Rotation
//
// The follower polls (Options.PollInterval). When it is at the end of its
// file and the path names another file, or no file, the old file is
// "rotated". It keeps the old descriptor and keeps reading it until the
// writer has visibly moved on: a newer file holds data (the new file at the
// path, or a rotated sibling newer than the old file). It then reads the old
// file to its end once more, and only then switches. So lines written to the
// old file after the rename (auditd's own rotation, logrotate's create, with
// the writer reopening a little later) are read, and if a writer never
// reopens (logrotate create without a signal) its lines are still followed.
//
// Siblings are the files in the same directory whose names start with the
// path's base name (audit.log.1, audit.log.2, audit.log-20240101), except
// compressed ones (.gz, .xz, .zst, ...). When the follower switches it reads,
// oldest first, every sibling newer than the file it finished (by
// modification time; ties broken by name: audit.log.2 is older than
// audit.log.1, audit.log-20240101 older than audit.log-20240102) before the
// current file, so several rotations between two polls, or during downtime,
// lose nothing.
//
// Truncation: when the file is shorter than the read offset, or its first
// bytes no longer match its fingerprint, reading restarts at offset 0 of the
// same file. With copytruncate (file copied, then truncated in place) lines
// written between the copy and the truncate are in neither file and cannot
// be recovered; that is inherent to copytruncate.
//
// # Resuming
//
// Options.Start is the checkpoint of the last line the caller made safe. The
// follower looks for that file (device+inode+fingerprint) at the path and
// among its siblings. Found at the path: it continues at Offset. Found as a
// sibling (rotated while down): it finishes that file from Offset, then the
// newer siblings, then the current file from 0. Not found by inode, but a
// sibling has the same full-length fingerprint (copytruncate while down): it
// continues in that copy. Not found at all: it starts the current file at 0
// and logs a warning that events may have been lost. With no checkpoint it
// starts at the beginning of the current file, never at its end: audit
// history written before forwarding first started is forwarded too.
//
// # Limitations
//
// Detection is by polling, so a change is seen up to PollInterval late.
// Siblings whose names start with the base name are assumed to be rotations
// of the file; an unrelated file named so and newer than the file being
// finished is read too. A sibling scan opens files as it lists them and
// lists the directory until two listings agree, keeping every file seen, so
// a rotation renaming files meanwhile (audit.log.1 -> .2 -> ...) is
// survived; a file that every listing misses would still be lost. Equal
// modification times of files with unrelated names are ordered by name
// only. Lines written to a
// rotated file after a newer file already received data (two writers) are
// lost. Only '\n' ends a line; '\r', NUL and invalid UTF-8 pass through.
package tail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxLineBytes     = 64 << 10
	DefaultFingerprintBytes = 1024
	DefaultPollInterval     = 200 * time.Millisecond

	// minBufSize is the smallest read buffer; it is larger when
	// MaxLineBytes needs it.
	minBufSize = 256 << 10
)

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("tail: follower closed")

// errChanged reports that the file's first bytes no longer match its
// fingerprint.
var errChanged = errors.New("tail: file content changed")

// Checkpoint is a position in one file; JSON-marshalable, stored by the
// caller. Resuming with the Checkpoint of a Line continues with the line
// after it.
type Checkpoint struct {
	Dev   uint64 `json:"dev"`
	Inode uint64 `json:"inode"`
	// FingerprintLen is the number of bytes hashed (0..FingerprintBytes).
	FingerprintLen int `json:"fingerprint_len"`
	// Fingerprint is the hex SHA-256 of the first FingerprintLen bytes.
	Fingerprint string `json:"fingerprint"`
	// Offset is the next byte to read.
	Offset int64 `json:"offset"`
}

// Line is one line, or one piece of a long line.
type Line struct {
	// Data is the line without its newline. It points into the follower's
	// buffer and is valid until the next call to Next; copy it to keep it.
	Data []byte
	// Checkpoint is the position just after this line (after its newline):
	// commit it once the line is safe.
	Checkpoint Checkpoint
	// Partial marks a piece that is not a whole line: a line cut at
	// MaxLineBytes (more pieces follow, the last one is not Partial), or
	// the unterminated end of a file flushed when the follower switched
	// away from it (rotation, truncation).
	Partial bool
}

// Options configures a Follower.
type Options struct {
	// Path is the file to follow. Required.
	Path string
	// Start is where to resume (see the package comment). Nil starts at
	// the beginning (offset 0) of the current file, not its end, so no
	// audit history is skipped.
	Start *Checkpoint
	// MaxLineBytes caps Line.Data (default 64 KiB); longer lines are split
	// into Partial pieces.
	MaxLineBytes int
	// FingerprintBytes is how many leading bytes identify a file (default
	// 1024).
	FingerprintBytes int
	// PollInterval is how often the file is checked while there is nothing
	// to read (default 200ms).
	PollInterval time.Duration
	// Logger receives warnings (possible data loss, truncation) and
	// rotation notices. Default slog.Default().
	Logger *slog.Logger
}

// Follower reads lines from a file across rotation. Next must not be called
// from several goroutines at once; Close may be called at any time, also
// while Next is blocked.
type Follower struct {
	o         Options
	log       *slog.Logger
	dir, base string
	start     *Checkpoint // resolved on the first Next, then nil
	startSum  [32]byte

	done      chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex
	closed   bool
	timer    *time.Timer
	cur      *source   // the file being read; nil before it is opened
	queue    []*source // files to read after cur, oldest first
	draining bool      // the writer moved on; switch at the next EOF
	recheck  bool      // waited at EOF: check for truncation before reading
	buf      []byte
	r, w     int // buf[r:w] is read from the file but not returned
	scratch  []byte

	loggedMissing bool
	loggedRotated bool

	idleHook func() // tests: called, with mu held, before each poll wait
}

// New checks the options and returns a Follower. It does not open the file;
// Next does, waiting for it to appear.
func New(o Options) (*Follower, error) {
	if o.Path == "" {
		return nil, errors.New("tail: Options.Path is empty")
	}
	if o.MaxLineBytes < 0 || o.FingerprintBytes < 0 || o.PollInterval < 0 {
		return nil, errors.New("tail: negative option")
	}
	if o.MaxLineBytes == 0 {
		o.MaxLineBytes = DefaultMaxLineBytes
	}
	if o.FingerprintBytes == 0 {
		o.FingerprintBytes = DefaultFingerprintBytes
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	f := &Follower{
		o:    o,
		log:  o.Logger,
		dir:  filepath.Dir(o.Path),
		base: filepath.Base(o.Path),
		done: make(chan struct{}),
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	if o.Start != nil {
		cp := *o.Start
		if cp.Offset < 0 || cp.FingerprintLen < 0 {
			return nil, fmt.Errorf("tail: invalid checkpoint %+v", cp)
		}
		sum, err := cp.sum()
		if err != nil {
			return nil, err
		}
		f.startSum = sum
		f.start = &cp
	}
	n := max(minBufSize, 2*(o.MaxLineBytes+1))
	f.buf = make([]byte, n)
	f.scratch = make([]byte, o.FingerprintBytes)
	return f, nil
}

// Next returns the next complete line, blocking until one is available, ctx
// ends (ctx.Err()) or the follower is closed (ErrClosed); a line already
// buffered is returned even if ctx is done. A last line without a newline
// is not returned until its newline arrives (or the file is rotated away or
// truncated: then it is flushed as Partial). Other errors are I/O errors;
// the follower stays usable and Next may be called again.
func (f *Follower) Next(ctx context.Context) (Line, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.closed {
			return Line{}, ErrClosed
		}
		if f.cur == nil {
			if err := ctx.Err(); err != nil {
				return Line{}, err
			}
			if !f.open() {
				if err := f.wait(ctx); err != nil {
					return Line{}, err
				}
			}
			continue
		}
		if l, ok := f.scan(); ok {
			return l, nil
		}
		if err := ctx.Err(); err != nil {
			return Line{}, err
		}
		if f.recheck {
			// The file may have been truncated and rewritten past our offset
			// while we waited: check before reading stale offsets.
			f.recheck = false
			if l, ok, again, err := f.truncated(); err != nil {
				return Line{}, err
			} else if ok {
				return l, nil
			} else if again {
				continue
			}
		}
		n, err := f.fill()
		if errors.Is(err, errChanged) {
			if l, ok := f.restart("first bytes changed"); ok {
				return l, nil
			}
			continue
		}
		if err != nil {
			return Line{}, err
		}
		if n > 0 {
			continue
		}
		l, ok, again, err := f.atEOF()
		if err != nil {
			return Line{}, err
		}
		if ok {
			return l, nil
		}
		if again {
			continue
		}
		if err := f.wait(ctx); err != nil {
			return Line{}, err
		}
		f.recheck = true
	}
}

// truncated restarts the current file when it is shorter than the read
// offset or its first bytes changed.
func (f *Follower) truncated() (l Line, ok, again bool, err error) {
	s := f.cur
	fi, err := s.f.Stat()
	if err != nil {
		return Line{}, false, false, fmt.Errorf("tail: stat %s: %w", s.name, err)
	}
	if fi.Size() < s.readOff {
		l, ok = f.restart("file is shorter than the read offset")
		return l, ok, true, nil
	}
	same, err := s.prefixMatches(f.scratchN(s.fpLen))
	if err != nil {
		return Line{}, false, false, fmt.Errorf("tail: read %s: %w", s.name, err)
	}
	if !same {
		l, ok = f.restart("first bytes changed")
		return l, ok, true, nil
	}
	return Line{}, false, false, nil
}

// Close releases the open files and makes a blocked or later Next return
// ErrClosed.
func (f *Follower) Close() error {
	f.closeOnce.Do(func() { close(f.done) })
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var err error
	if f.cur != nil {
		err = f.cur.f.Close()
		f.cur = nil
	}
	for _, s := range f.queue {
		s.f.Close()
	}
	f.queue = nil
	if f.timer != nil {
		f.timer.Stop()
	}
	return err
}

// scan returns the next line or piece held in the buffer.
func (f *Follower) scan() (Line, bool) {
	data := f.buf[f.r:f.w]
	limit := f.o.MaxLineBytes
	search := data
	if len(search) > limit+1 {
		search = search[:limit+1]
	}
	var line []byte
	partial := false
	if i := bytes.IndexByte(search, '\n'); i >= 0 && i <= limit {
		line = data[:i:i]
		f.r += i + 1
	} else if len(data) > limit {
		line = data[:limit:limit]
		f.r += limit
		partial = true
	} else {
		return Line{}, false
	}
	return Line{
		Data:       line,
		Partial:    partial,
		Checkpoint: f.cur.checkpoint(f.cur.readOff - int64(f.w-f.r)),
	}, true
}

// fill reads more of the current file into the buffer; 0 bytes means EOF.
func (f *Follower) fill() (int, error) {
	s := f.cur
	if f.r == f.w {
		f.r, f.w = 0, 0
	} else if f.r > 0 {
		f.w = copy(f.buf, f.buf[f.r:f.w])
		f.r = 0
	}
	w0 := f.w
	n, err := s.f.ReadAt(f.buf[f.w:], s.readOff)
	if err == io.EOF {
		err = nil
	}
	if err != nil {
		return 0, fmt.Errorf("tail: read %s: %w", s.name, err)
	}
	s.readOff += int64(n)
	f.w += n
	if s.fpLen < f.o.FingerprintBytes {
		// Extend the fingerprint after reading, so every line returned
		// from this read carries a fingerprint covering at least
		// min(its offset, FingerprintBytes) bytes.
		ok, err := s.extendFingerprint(f.o.FingerprintBytes, f.scratchN(max(f.o.FingerprintBytes, s.fpLen)))
		if err != nil {
			return 0, fmt.Errorf("tail: read %s: %w", s.name, err)
		}
		if !ok {
			// What was just read came from a rewritten file at a stale
			// offset: drop it.
			s.readOff -= int64(n)
			f.w = w0
			return 0, errChanged
		}
	}
	return n, nil
}

// atEOF runs the checks due when the current file has no more data: in-place
// truncation, then rotation. ok: l is a line to return. again: state changed,
// read again without waiting.
func (f *Follower) atEOF() (l Line, ok, again bool, err error) {
	if l, ok, again, err := f.truncated(); err != nil || ok || again {
		return l, ok, again, err
	}
	if len(f.queue) == 0 && !f.rotated() {
		return Line{}, false, false, nil
	}
	if !f.draining {
		// The writer has moved on: read the old file to its end once
		// more before switching.
		f.draining = true
		return Line{}, false, true, nil
	}
	l, ok = f.switchNext()
	return l, ok, true, nil
}

// rotated reports whether the current file has been rotated away and the
// writer has moved on; if so it fills f.queue with the files to read next.
func (f *Follower) rotated() bool {
	cur := f.cur
	var next *source
	var nextSize int64
	fi, err := os.Stat(f.o.Path)
	switch {
	case err == nil:
		if dev, ino, ok := fileID(fi); ok && dev == cur.dev && ino == cur.ino {
			f.loggedRotated = false
			return false
		}
		var nfi os.FileInfo
		next, nfi, err = openSource(f.o.Path)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				f.log.Warn("tail: cannot open new file", "path", f.o.Path, "err", err)
			}
			next = nil
			break
		}
		if next.dev == cur.dev && next.ino == cur.ino {
			next.close()
			return false
		}
		nextSize = nfi.Size()
	case errors.Is(err, fs.ErrNotExist):
	default:
		f.log.Warn("tail: cannot stat file", "path", f.o.Path, "err", err)
		return false
	}
	succ := f.successors(cur, next)
	moved := next != nil && nextSize > 0
	for _, s := range succ {
		if fi, err := s.f.Stat(); err == nil && fi.Size() > 0 {
			moved = true
		}
	}
	if !moved {
		next.close()
		for _, s := range succ {
			s.close()
		}
		if !f.loggedRotated {
			f.log.Info("tail: file was rotated or removed; still reading it until a newer file has data",
				"path", f.o.Path, "inode", cur.ino)
			f.loggedRotated = true
		}
		return false
	}
	f.loggedRotated = false
	if next != nil {
		succ = append(succ, next)
	}
	f.queue = succ
	return true
}

// switchNext closes the current file and continues with the first queued
// one. An unterminated last line of the old file is returned as Partial.
func (f *Follower) switchNext() (Line, bool) {
	old := f.cur
	l, ok := f.flushPartial()
	old.close()
	f.cur = f.queue[0]
	f.queue[0] = nil
	f.queue = f.queue[1:]
	f.draining = false
	f.log.Info("tail: switched to next file", "path", f.o.Path, "from_inode", old.ino,
		"from_offset", old.readOff, "to", f.cur.name, "to_inode", f.cur.ino)
	return l, ok
}

// restart reads the current file again from offset 0 after it was
// truncated or rewritten in place.
func (f *Follower) restart(why string) (Line, bool) {
	s := f.cur
	f.log.Warn("tail: file truncated or rewritten in place, reading it again from offset 0"+
		" (with copytruncate, lines written between the copy and the truncate are lost)",
		"path", s.name, "inode", s.ino, "offset", s.readOff, "reason", why)
	l, ok := f.flushPartial()
	s.readOff = 0
	s.fpLen, s.fpSum, s.fpHex = 0, emptySum, emptyHex
	f.draining = false
	return l, ok
}

// flushPartial returns the buffered unterminated data of the current file
// as a Partial line and empties the buffer (its bytes stay valid until the
// next fill).
func (f *Follower) flushPartial() (Line, bool) {
	if f.r == f.w {
		f.r, f.w = 0, 0
		return Line{}, false
	}
	l := Line{
		Data:       f.buf[f.r:f.w:f.w],
		Partial:    true,
		Checkpoint: f.cur.checkpoint(f.cur.readOff),
	}
	f.r, f.w = 0, 0
	return l, true
}

// open opens the first file: the checkpoint's if it is found, else the
// current file at offset 0.
func (f *Follower) open() bool {
	if f.start != nil {
		cp := *f.start
		f.start = nil
		if s := f.resolve(cp, f.startSum); s != nil {
			f.cur = s
			return true
		}
	}
	s, _, err := openSource(f.o.Path)
	if err != nil {
		if !f.loggedMissing {
			if errors.Is(err, fs.ErrNotExist) {
				f.log.Info("tail: waiting for file to appear", "path", f.o.Path)
			} else {
				f.log.Warn("tail: cannot open file, will retry", "path", f.o.Path, "err", err)
			}
			f.loggedMissing = true
		}
		return false
	}
	f.loggedMissing = false
	f.cur = s
	return true
}

// wait sleeps one poll interval, or until ctx ends or Close.
func (f *Follower) wait(ctx context.Context) error {
	if f.idleHook != nil {
		f.idleHook()
	}
	if f.timer == nil {
		f.timer = time.NewTimer(f.o.PollInterval)
	} else {
		f.timer.Reset(f.o.PollInterval)
	}
	t := f.timer
	f.mu.Unlock()
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-f.done:
		err = ErrClosed
	case <-t.C:
	}
	f.mu.Lock()
	return err
}

func (f *Follower) scratchN(n int) []byte {
	if len(f.scratch) < n {
		f.scratch = make([]byte, n)
	}
	return f.scratch[:n]
}
