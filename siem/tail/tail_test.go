package tail

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// logSink records log messages.
type logSink struct {
	mu   sync.Mutex
	msgs []string
}

func (ls *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (ls *logSink) Handle(_ context.Context, r slog.Record) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.msgs = append(ls.msgs, r.Level.String()+" "+r.Message)
	return nil
}
func (ls *logSink) WithAttrs([]slog.Attr) slog.Handler { return ls }
func (ls *logSink) WithGroup(string) slog.Handler      { return ls }

// count returns how many messages contain sub.
func (ls *logSink) count(sub string) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	n := 0
	for _, m := range ls.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

func newFollower(t *testing.T, o Options) (*Follower, *logSink) {
	t.Helper()
	sink := &logSink{}
	o.Logger = slog.New(sink)
	if o.PollInterval == 0 {
		o.PollInterval = time.Millisecond
	}
	f, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, sink
}

// next returns the next line, failing the test if none comes within 10s
// (a hang guard, not an assertion on timing).
func next(t *testing.T, f *Follower) Line {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := f.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	l.Data = append([]byte(nil), l.Data...)
	return l
}

func wantLine(t *testing.T, f *Follower, want string) Line {
	t.Helper()
	l := next(t, f)
	if string(l.Data) != want || l.Partial {
		t.Fatalf("got %q partial=%v, want %q", l.Data, l.Partial, want)
	}
	return l
}

// wantNoMore checks that the follower, having read everything there is and
// gone idle, has no further line: the idle hook cancels the context.
func wantNoMore(t *testing.T, f *Follower) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.idleHook = cancel
	defer func() { f.idleHook = nil }()
	l, err := f.Next(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want no more lines, got %q partial=%v err=%v", l.Data, l.Partial, err)
	}
}

// onIdle runs steps, one per idle poll, in order; later polls do nothing.
func onIdle(f *Follower, steps ...func()) {
	i := 0
	f.idleHook = func() {
		if i < len(steps) {
			steps[i]()
			i++
		}
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, fh *os.File, s string) {
	t.Helper()
	if _, err := fh.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func ident(t *testing.T, path string) (dev, ino uint64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	dev, ino, ok := fileID(fi)
	if !ok {
		t.Fatal("no inode numbers")
	}
	return dev, ino
}

func hexSum(b string) string {
	sum := sha256.Sum256([]byte(b))
	return hex.EncodeToString(sum[:])
}

func TestCompleteLinesOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "one\ntwo\nthr")
	f, _ := newFollower(t, Options{Path: path})
	if l := wantLine(t, f, "one"); l.Checkpoint.Offset != 4 {
		t.Fatalf("offset %d", l.Checkpoint.Offset)
	}
	if l := wantLine(t, f, "two"); l.Checkpoint.Offset != 8 {
		t.Fatalf("offset %d", l.Checkpoint.Offset)
	}
	// The follower reaches EOF having read "thr" and must not return it;
	// the rest is appended only then.
	onIdle(f, func() { appendFile(t, path, "ee") }, func() { appendFile(t, path, "\nfour\n") })
	l := wantLine(t, f, "three")
	dev, ino := ident(t, path)
	want := Checkpoint{Dev: dev, Inode: ino, FingerprintLen: 19, Fingerprint: hexSum("one\ntwo\nthree\nfour\n"), Offset: 14}
	if l.Checkpoint != want {
		t.Fatalf("checkpoint %+v, want %+v", l.Checkpoint, want)
	}
	wantLine(t, f, "four")
	wantNoMore(t, f)
}

func TestCheckpointJSON(t *testing.T) {
	cp := Checkpoint{Dev: 1, Inode: 2, FingerprintLen: 3, Fingerprint: hexSum("abc"), Offset: 4}
	b, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	var got Checkpoint
	if err := json.Unmarshal(b, &got); err != nil || got != cp {
		t.Fatalf("round trip %s -> %+v, %v", b, got, err)
	}
}

func TestWaitsForFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, sink := newFollower(t, Options{Path: path})
	onIdle(f, func() {}, func() {}, func() { writeFile(t, path, "hello\n") })
	wantLine(t, f, "hello")
	if n := sink.count("waiting for file"); n != 1 {
		t.Fatalf("logged waiting %d times, want once", n)
	}
}

// TestRenameRotation: logrotate create / auditd: rename, then a new file.
func TestRenameRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	w, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	mustWrite(t, w, "L1\nL2\n")
	f, _ := newFollower(t, Options{Path: path})
	wantLine(t, f, "L1")
	wantLine(t, f, "L2")

	// Rotation happens before the follower notices; the writer writes to
	// the old file after the rename, then to the new one.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, w, "L3\n")
	w.Close()
	w, err = os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, w, "N1\n")
	wantLine(t, f, "L3")
	l := wantLine(t, f, "N1")
	dev, ino := ident(t, path)
	if l.Checkpoint.Inode != ino || l.Checkpoint.Dev != dev || l.Checkpoint.Offset != 3 {
		t.Fatalf("checkpoint %+v", l.Checkpoint)
	}
	wantNoMore(t, f)

	// Rotation the follower notices while the new file is still empty:
	// it keeps reading the old file until the new one has data.
	oldIno := ino
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	nw, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close()
	onIdle(f, func() {}, func() { mustWrite(t, w, "N2\n") }, func() {}, func() { mustWrite(t, nw, "M1\n") })
	if l := wantLine(t, f, "N2"); l.Checkpoint.Inode != oldIno || l.Checkpoint.Offset != 6 {
		t.Fatalf("checkpoint %+v", l.Checkpoint)
	}
	wantLine(t, f, "M1")
	wantNoMore(t, f)
}

func TestRotationFlushesUnterminatedLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeFile(t, path, "a\npart")
	f, _ := newFollower(t, Options{Path: path})
	wantLine(t, f, "a")
	_, oldIno := ident(t, path)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "b\n")
	l := next(t, f)
	if string(l.Data) != "part" || !l.Partial || l.Checkpoint.Inode != oldIno || l.Checkpoint.Offset != 6 {
		t.Fatalf("got %q partial=%v %+v", l.Data, l.Partial, l.Checkpoint)
	}
	wantLine(t, f, "b")
	wantNoMore(t, f)
}

// TestManyRotationsBetweenPolls: two rotations (numbered, auditd style)
// before the follower looks; the middle file is read too.
func TestManyRotationsBetweenPolls(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeFile(t, path, "A1\n")
	f, _ := newFollower(t, Options{Path: path})
	wantLine(t, f, "A1")
	appendFile(t, path, "A2\n")
	rename(t, path, path+".1")
	writeFile(t, path, "B1\n")
	rename(t, path+".1", path+".2")
	rename(t, path, path+".1")
	writeFile(t, path, "C1\n")
	// All three files get the same modification time: the names decide.
	same := time.Now().Add(-time.Hour)
	for _, p := range []string{path, path + ".1", path + ".2"} {
		if err := os.Chtimes(p, same, same); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, path+".3.gz", "binary\n")
	wantLine(t, f, "A2")
	wantLine(t, f, "B1")
	wantLine(t, f, "C1")
	wantNoMore(t, f)
}

func rename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func TestTruncateInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "aaaa\nbbbb\n")
	f, sink := newFollower(t, Options{Path: path})
	wantLine(t, f, "aaaa")
	wantLine(t, f, "bbbb")
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, "c\n")
	l := wantLine(t, f, "c")
	_, ino := ident(t, path)
	if l.Checkpoint.Offset != 2 || l.Checkpoint.Inode != ino {
		t.Fatalf("checkpoint %+v", l.Checkpoint)
	}
	if sink.count("truncated") == 0 {
		t.Fatal("no truncation warning")
	}
	wantNoMore(t, f)
}

// TestCopyTruncate: copied to .1, truncated, then more written than the old
// offset before the follower looks: the fingerprint reveals it.
func TestCopyTruncate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "a\nb\n")
	f, _ := newFollower(t, Options{Path: path})
	wantLine(t, f, "a")
	wantLine(t, f, "b")
	_, ino := ident(t, path)
	writeFile(t, path+".1", "a\nb\n")
	writeFile(t, path, "xxxxxxxx\nyyyy\n") // O_TRUNC: same inode
	if _, ino2 := ident(t, path); ino2 != ino {
		t.Fatal("inode changed")
	}
	wantLine(t, f, "xxxxxxxx")
	if l := wantLine(t, f, "yyyy"); l.Checkpoint.Offset != 14 || l.Checkpoint.Inode != ino {
		t.Fatalf("checkpoint %+v", l.Checkpoint)
	}
	wantNoMore(t, f)
}

func TestIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "hello world\n")
	dev, ino := ident(t, path)
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	good := Checkpoint{Dev: dev, Inode: ino, FingerprintLen: 5, Fingerprint: hexSum("hello"), Offset: 6}
	for _, tc := range []struct {
		name string
		cp   Checkpoint
		want bool
	}{
		{"same", good, true},
		{"other fingerprint (inode reused)", Checkpoint{Dev: dev, Inode: ino, FingerprintLen: 5, Fingerprint: hexSum("howdy"), Offset: 6}, false},
		{"file shorter than fingerprint", Checkpoint{Dev: dev, Inode: ino, FingerprintLen: 100, Fingerprint: hexSum("hello"), Offset: 6}, false},
		{"other inode", Checkpoint{Dev: dev, Inode: ino + 1, FingerprintLen: 5, Fingerprint: hexSum("hello")}, false},
		{"other device", Checkpoint{Dev: dev + 1, Inode: ino, FingerprintLen: 5, Fingerprint: hexSum("hello")}, false},
		{"empty fingerprint", Checkpoint{Dev: dev, Inode: ino}, true},
	} {
		got, err := sameFile(tc.cp, dev, ino, fh)
		if err != nil || got != tc.want {
			t.Errorf("%s: sameFile = %v, %v; want %v", tc.name, got, err, tc.want)
		}
		if got, err := tc.cp.Matches(fh); err != nil || got != tc.want {
			t.Errorf("%s: Matches = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}

	// A follower given a checkpoint whose inode now holds another file
	// starts that file at 0.
	bad := good
	bad.Fingerprint = hexSum("howdy")
	f, sink := newFollower(t, Options{Path: path, Start: &bad})
	wantLine(t, f, "hello world")
	if sink.count("different file") != 1 || sink.count("may have been lost") != 1 {
		t.Fatalf("log %q", sink.msgs)
	}
	f.Close()
	// With the right fingerprint it resumes at the offset.
	writeFile(t, path, "hello\nworld\n")
	f, _ = newFollower(t, Options{Path: path, Start: &good})
	wantLine(t, f, "world")
}

func TestResumeGrown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "1\n2\n3\n")
	f, _ := newFollower(t, Options{Path: path})
	wantLine(t, f, "1")
	cp := wantLine(t, f, "2").Checkpoint
	f.Close()
	appendFile(t, path, "4\n5\n")
	f, sink := newFollower(t, Options{Path: path, Start: &cp})
	wantLine(t, f, "3")
	wantLine(t, f, "4")
	wantLine(t, f, "5")
	wantNoMore(t, f)
	if sink.count("WARN") != 0 {
		t.Fatalf("unexpected warnings %q", sink.msgs)
	}
}

func TestResumeRotatedWhileDown(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeFile(t, path, "L1\nL2\nL3\n")
	f, _ := newFollower(t, Options{Path: path})
	cp := wantLine(t, f, "L1").Checkpoint
	f.Close()
	rename(t, path, path+".1")
	appendFile(t, path+".1", "L4\n")
	writeFile(t, path, "N1\nN2\n")
	f, sink := newFollower(t, Options{Path: path, Start: &cp})
	for _, want := range []string{"L2", "L3", "L4", "N1", "N2"} {
		wantLine(t, f, want)
	}
	wantNoMore(t, f)
	if sink.count("WARN") != 0 {
		t.Fatalf("unexpected warnings %q", sink.msgs)
	}
}

// TestResumeRotatedSeveralTimes: down across three rotations; an older
// file and a compressed one are not read.
func TestResumeRotatedSeveralTimes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	base := time.Now().Add(-time.Hour)
	writeFile(t, path, "A1\nA2\n")
	f, _ := newFollower(t, Options{Path: path})
	cp := wantLine(t, f, "A1").Checkpoint
	f.Close()

	writeFile(t, path+".4", "OLD\n")
	rename(t, path, path+".3") // the checkpoint's file
	writeFile(t, path+".2", "B1\n")
	writeFile(t, path+".1", "C1\nC2\n")
	writeFile(t, path, "D1\n")
	writeFile(t, path+".5.gz", "\x1f\x8bgarbage\n")
	for i, p := range []string{path + ".4", path + ".3", path + ".2", path + ".1", path, path + ".5.gz"} {
		ts := base.Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(p, ts, ts); err != nil {
			t.Fatal(err)
		}
	}
	f, _ = newFollower(t, Options{Path: path, Start: &cp})
	for _, want := range []string{"A2", "B1", "C1", "C2", "D1"} {
		wantLine(t, f, want)
	}
	wantNoMore(t, f)
}

func TestResumeFileGone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeFile(t, path, "old1\nold2\n")
	f, _ := newFollower(t, Options{Path: path})
	cp := wantLine(t, f, "old1").Checkpoint
	f.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "new1\n") // may well get the same inode
	f, sink := newFollower(t, Options{Path: path, Start: &cp})
	wantLine(t, f, "new1")
	wantNoMore(t, f)
	if sink.count("may have been lost") != 1 {
		t.Fatalf("log %q", sink.msgs)
	}
}

// TestResumeAfterCopyTruncate: copytruncate while down; the copy is found by
// its fingerprint and finished first.
func TestResumeAfterCopyTruncate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	first := strings.Repeat("x", 30) + "\n"
	writeFile(t, path, first+"a\nb\n")
	f, _ := newFollower(t, Options{Path: path, FingerprintBytes: 16})
	cp := wantLine(t, f, strings.Repeat("x", 30)).Checkpoint
	f.Close()
	if cp.FingerprintLen != 16 {
		t.Fatalf("checkpoint %+v", cp)
	}
	writeFile(t, path+".1", first+"a\nb\nc\n")
	past := time.Now().Add(-time.Minute)
	if err := os.Chtimes(path+".1", past, past); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "new\n") // truncated in place, rewritten
	f, _ = newFollower(t, Options{Path: path, FingerprintBytes: 16, Start: &cp})
	for _, want := range []string{"a", "b", "c", "new"} {
		wantLine(t, f, want)
	}
	wantNoMore(t, f)
}

func TestLongLinesAndBinary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "0123456789abcdefXYZ\n"+"12345678\n"+"abcdefghABCDEFGH\n"+"\xff\x00bin\xfe\r\n")
	f, _ := newFollower(t, Options{Path: path, MaxLineBytes: 8})
	want := []struct {
		data    string
		partial bool
		off     int64
	}{
		{"01234567", true, 8}, {"89abcdef", true, 16}, {"XYZ", false, 20},
		{"12345678", false, 29},
		{"abcdefgh", true, 37}, {"ABCDEFGH", false, 46},
		{"\xff\x00bin\xfe\r", false, 54},
	}
	for _, w := range want {
		l := next(t, f)
		if string(l.Data) != w.data || l.Partial != w.partial || l.Checkpoint.Offset != w.off {
			t.Fatalf("got %q partial=%v off=%d, want %q %v %d", l.Data, l.Partial, l.Checkpoint.Offset, w.data, w.partial, w.off)
		}
	}
	wantNoMore(t, f)
}

func TestCloseUnblocksNext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeFile(t, path, "")
	f, _ := newFollower(t, Options{Path: path, PollInterval: time.Hour})
	idle := make(chan struct{}, 1)
	f.idleHook = func() {
		select {
		case idle <- struct{}{}:
		default:
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := f.Next(context.Background())
		errc <- err
	}()
	<-idle
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	if _, err := f.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{
		{},
		{Path: "x", MaxLineBytes: -1},
		{Path: "x", Start: &Checkpoint{FingerprintLen: 3, Fingerprint: "zz"}},
		{Path: "x", Start: &Checkpoint{Offset: -1}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// TestRestartLoopAcrossRotation: a writer appends numbered lines (often in
// two writes, so lines are half-written at times) and rotates auditd-style
// (shift audit.log.N -> .N+1, rename audit.log -> .1, one more line to the
// old file, then a new audit.log); a reader takes a few lines at a time,
// then "crashes" and resumes from the last line's checkpoint. Every line
// must arrive exactly once, in order.
func TestRestartLoopAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	const total = 3000
	w, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	writerErr := make(chan error, 1)
	started := make(chan struct{}) // the reader holds the first file
	go func() {
		defer w.Close()
		rotations := 0
		line := func(i int) string { return fmt.Sprintf("line %05d %s", i, strings.Repeat("x", i%37)) }
		for i := 0; i < total; i++ {
			if i == 50 {
				<-started
			}
			s := line(i) + "\n"
			if i%3 == 0 {
				if _, err := io.WriteString(w, s[:len(s)/2]); err != nil {
					writerErr <- err
					return
				}
				s = s[len(s)/2:]
			}
			if _, err := io.WriteString(w, s); err != nil {
				writerErr <- err
				return
			}
			if i%113 == 112 && i+1 < total {
				for n := rotations; n >= 1; n-- {
					if err := os.Rename(fmt.Sprintf("%s.%d", path, n), fmt.Sprintf("%s.%d", path, n+1)); err != nil {
						writerErr <- err
						return
					}
				}
				rotations++
				if err := os.Rename(path, path+".1"); err != nil {
					writerErr <- err
					return
				}
				i++
				if _, err := io.WriteString(w, line(i)+"\n"); err != nil {
					writerErr <- err
					return
				}
				w.Close()
				if w, err = os.Create(path); err != nil {
					writerErr <- err
					return
				}
			}
		}
		writerErr <- nil
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var cp *Checkpoint
	got := 0
	for restarts := 0; got < total; restarts++ {
		sink := &logSink{}
		f, err := New(Options{Path: path, Start: cp, PollInterval: time.Millisecond, Logger: slog.New(sink)})
		if err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 1+restarts%41 && got < total; k++ {
			l, err := f.Next(ctx)
			if err != nil {
				t.Fatalf("after %d lines, %d restarts: %v", got, restarts, err)
			}
			want := fmt.Sprintf("line %05d %s", got, strings.Repeat("x", got%37))
			if string(l.Data) != want || l.Partial {
				t.Fatalf("line %d: got %q partial=%v, want %q", got, l.Data, l.Partial, want)
			}
			got++
			if got == 1 {
				close(started)
			}
			c := l.Checkpoint
			cp = &c
		}
		f.Close()
		if n := sink.count("WARN"); n != 0 {
			t.Fatalf("warnings: %q", sink.msgs)
		}
	}
	if err := <-writerErr; err != nil {
		t.Fatal(err)
	}
	// Nothing more after the last line.
	f, _ := newFollower(t, Options{Path: path, Start: cp})
	wantNoMore(t, f)
}
