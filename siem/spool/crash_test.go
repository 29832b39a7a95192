package spool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const crashEnv = "BUDFLEET_SPOOL_CRASH_CHILD"

const crashRounds = 20

var crashSources = []string{"audit", "app"}

// TestCrashConsistency re-executes the test binary as a child that appends
// batches (entries to two queues plus the checkpoints of their sources, in
// one transaction) in a loop, and SIGKILLs it at a random moment. After each
// kill the parent reopens the file and checks that every checkpoint points
// exactly at the last entry of its source, that nothing in between is
// missing, and that the stored counters match the entries. Each child
// resumes from the checkpoints, as the agent does.
func TestCrashConsistency(t *testing.T) {
	if path := os.Getenv(crashEnv); path != "" {
		crashChild(path)
		return
	}
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	path := t.TempDir() + "/spool.db"
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	total := 0
	for round := range crashRounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashConsistency$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path)
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		started, drained := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(drained)
			sc := bufio.NewScanner(pipe)
			signal := started
			for sc.Scan() {
				if sc.Text() == "appending" && signal != nil {
					close(signal)
					signal = nil
				}
				out.Write(sc.Bytes())
				out.WriteByte('\n')
			}
			io.Copy(&out, pipe)
		}()
		// Let the child open the file first (a slow -race start), then kill
		// it anywhere in its loop.
		select {
		case <-started:
		case <-drained:
		case <-time.After(30 * time.Second):
		}
		time.Sleep(time.Duration(5+rng.IntN(150)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-drained
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die by SIGKILL (%v):\n%s", round, err, out.String())
		}
		total = checkCrashed(t, path, round)
	}
	if total == 0 {
		t.Fatal("the children appended nothing")
	}
	t.Logf("%d entries per queue after %d kills", total, crashRounds)
}

// checkCrashed verifies the file a killed child left; it returns the
// number of entries in the archive queue.
func checkCrashed(t *testing.T, path string, round int) int {
	t.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("round %d: reopen: %v", round, err)
	}
	defer s.Close()
	checkCounters(t, s)

	archive := peekAll(t, s, "archive")
	last := map[string]uint64{}
	for i, it := range archive {
		if it.Seq != uint64(i+1) {
			t.Fatalf("round %d: archive entry %d has seq %d", round, i, it.Seq)
		}
		src, n := parseCrashEntry(t, it.Data)
		if n != last[src]+1 {
			t.Fatalf("round %d: source %s jumps from %d to %d at seq %d", round, src, last[src], n, it.Seq)
		}
		last[src] = n
	}
	for _, src := range crashSources {
		cp, err := s.Checkpoint(src)
		if err != nil {
			t.Fatal(err)
		}
		if got := seqOf(cp); got != last[src] || (cp == nil) != (last[src] == 0) {
			t.Fatalf("round %d: checkpoint of %s is %v, last entry spooled is %d", round, src, cp, last[src])
		}
	}
	// live is archive less an acknowledged prefix, with the same sequences.
	live := peekAll(t, s, "live")
	if len(live) > 0 {
		if want := archive[len(archive)-1].Seq; live[len(live)-1].Seq != want {
			t.Fatalf("round %d: live ends at %d, archive at %d", round, live[len(live)-1].Seq, want)
		}
	}
	for i, it := range live {
		a := archive[it.Seq-1]
		if !bytes.Equal(a.Data, it.Data) || (i > 0 && it.Seq != live[i-1].Seq+1) {
			t.Fatalf("round %d: live seq %d (%q) disagrees with archive (%q)", round, it.Seq, it.Data, a.Data)
		}
	}
	t.Logf("round %d: archive %d, live %d, checkpoints %v", round, len(archive), len(live), last)
	return len(archive)
}

func parseCrashEntry(t *testing.T, data []byte) (string, uint64) {
	t.Helper()
	src, n, ok := strings.Cut(string(data), ":")
	if !ok {
		t.Fatalf("bad entry %q", data)
	}
	v, err := strconv.ParseUint(strings.TrimRight(n, "."), 10, 64)
	if err != nil {
		t.Fatalf("bad entry %q", data)
	}
	return src, v
}

// crashChild appends until killed. It never returns normally: any error
// exits with status 3 so that the parent notices.
func crashChild(path string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	s, err := Open(path, Options{LockTimeout: 5 * time.Second})
	if err != nil {
		fail(err)
	}
	next := map[string]uint64{}
	for _, src := range crashSources {
		cp, err := s.Checkpoint(src)
		if err != nil {
			fail(err)
		}
		next[src] = seqOf(cp)
	}
	// An output acknowledging a random prefix of live, concurrently.
	go func() {
		rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 2))
		for {
			items, err := s.Peek("live", 1+rng.IntN(300), 0)
			if err != nil {
				fail(err)
			}
			if len(items) > 0 {
				if err := s.Ack("live", items[rng.IntN(len(items))].Seq); err != nil {
					fail(err)
				}
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	}()
	fmt.Println("appending")
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 1))
	for {
		var batch []Entry
		cps := map[string][]byte{}
		for range 1 + rng.IntN(400) {
			src := crashSources[rng.IntN(len(crashSources))]
			next[src]++
			// Varying sizes, so that pages split at different places.
			data := fmt.Appendf(nil, "%s:%d%s", src, next[src], strings.Repeat(".", rng.IntN(600)))
			batch = append(batch, Entry{Queue: "archive", Data: data}, Entry{Queue: "live", Data: data})
			cps[src] = binary.BigEndian.AppendUint64(nil, next[src])
		}
		if err := s.Append(batch, cps); err != nil {
			fail(err)
		}
	}
}
