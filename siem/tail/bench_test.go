package tail

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkFollow reads a 100 MB file of 200-byte lines from the page cache.
func BenchmarkFollow(b *testing.B) {
	const (
		lineLen = 200
		size    = 100_000_000
		lines   = size / lineLen
	)
	path := filepath.Join(b.TempDir(), "audit.log")
	fh, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(fh, 1<<20)
	line := make([]byte, lineLen)
	for i := range line {
		line[i] = 'a' + byte(i%26)
	}
	line[lineLen-1] = '\n'
	for range lines {
		w.Write(line)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	fh.Close()
	// Warm the page cache.
	if fh, err := os.Open(path); err == nil {
		io.Copy(io.Discard, fh)
		fh.Close()
	}

	ctx := context.Background()
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		f, err := New(Options{Path: path, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		var n int
		for n = 0; n < lines; n++ {
			l, err := f.Next(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if len(l.Data) != lineLen-1 {
				b.Fatalf("line %d: %d bytes", n, len(l.Data))
			}
		}
		f.Close()
	}
}
