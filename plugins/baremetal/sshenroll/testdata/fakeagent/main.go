// fakeagent stands in for bud-agent in the enroller's tests: join, status
// and run with the real flags, recording what they were given, with no
// controller. Token "refuse-me" fails the join as a used token would.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fakeagent join|status|run")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	state := fs.String("state-dir", "", "")
	controller := fs.String("controller", "", "")
	hostname := fs.String("hostname", "", "")
	tokenFile := fs.String("token-file", "", "")
	config := fs.String("config", "", "")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "join":
		tok, err := os.ReadFile(*tokenFile)
		if err != nil {
			fail("read --token-file: %v", err)
		}
		token := strings.TrimSpace(string(tok))
		if err := os.MkdirAll(*state, 0o700); err != nil {
			fail("%v", err)
		}
		write(filepath.Join(*state, "agent.db"), "")
		if token == "refuse-me" {
			fail("enroll: the token is used up: mint a new one")
		}
		write(filepath.Join(*state, "joined"), fmt.Sprintf("controller=%s\nhostname=%s\ntoken=%s\ntoken_file=%s\n", *controller, *hostname, token, *tokenFile))
		fmt.Printf("enrolled as node node-%s\n", *hostname)
	case "status":
		b, err := os.ReadFile(filepath.Join(*state, "joined"))
		if err != nil {
			fail("not enrolled")
		}
		var ctl, host string
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "controller="); ok {
				ctl = v
			}
			if v, ok := strings.CutPrefix(l, "hostname="); ok {
				host = v
			}
		}
		fmt.Printf("node_id: node-%s\ncontroller: %s\ncertificate_expires: 2099-01-01T00:00:00Z\n", host, ctl)
	case "run":
		if _, err := os.Stat(*config); err != nil {
			fail("read agent config: %v", err)
		}
		if _, err := os.Stat(filepath.Join(*state, "joined")); err != nil {
			fail("not enrolled: run bud-agent join first")
		}
		write(filepath.Join(*state, "ran"), fmt.Sprint(os.Getpid()))
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
	default:
		fail("unknown command %s", os.Args[1])
	}
}

func write(p, s string) {
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "Error: "+format+"\n", args...)
	os.Exit(1)
}
