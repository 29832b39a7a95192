// vcsim serves govmomi's vCenter simulator (the VPX model of the pinned
// govmomi: datacenter DC0, cluster DC0_C0, datastore LocalDS_0, port group
// DC0_DVPG0, template-able VMs DC0_H0_VM0...) over TLS on loopback, with
// one user and password, for the end-to-end tests of the vSphere provider.
// It prints "vcsim URL" once listening and its certificate to --cert-out,
// and serves until SIGINT or SIGTERM.
package main

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	user := flag.String("username", "", "the one user that may log in")
	pwFile := flag.String("password-file", "", "file holding that user's password")
	certOut := flag.String("cert-out", "", "write the server's certificate (PEM) here")
	flag.Parse()
	if *user == "" || *pwFile == "" || *certOut == "" {
		return errors.New("--username, --password-file and --cert-out are required")
	}
	pw, err := os.ReadFile(*pwFile)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	m := simulator.VPX()
	if err := m.Create(); err != nil {
		return err
	}
	defer m.Remove()
	m.Service.TLS = new(tls.Config)
	m.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, strings.TrimRight(string(pw), "\r\n"))}
	s := m.Service.NewServer()
	defer s.Close()
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(*certOut, cert, 0o644); err != nil {
		return err
	}
	u := *s.URL
	u.User = nil
	fmt.Printf("vcsim %s\n", u.String())
	<-ctx.Done()
	return nil
}
