package artifact

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/agent/transport"
	"github.com/bud-ecosystem/budfleet/pki"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
)

const chunk = 64 << 10

// server plays the controller's NodeArtifactService over TLS, with faults
// a test turns on.
type server struct {
	artifactv1.UnimplementedNodeArtifactServiceServer
	blobs map[string][]byte // by digest
	chunk int64

	mu sync.Mutex
	// cutAfter ends the next call with Unavailable once it has sent this
	// many bytes (0: no cut); block instead waits until the client gives up.
	cutAfter int64
	block    bool
	// flip corrupts one byte of the chunk at this offset, flips times.
	flipAt int64
	flips  int
	// down fails every call before it sends anything.
	down bool
	// What the calls asked for and sent.
	offsets []uint64
	sent    int64
}

func (s *server) Fetch(req *artifactv1.FetchRequest, stream artifactv1.NodeArtifactService_FetchServer) error {
	b, ok := s.blobs[req.GetDigest()]
	if !ok {
		return status.Errorf(codes.NotFound, "artifact %s: not found", req.GetDigest())
	}
	s.mu.Lock()
	s.offsets = append(s.offsets, req.GetOffset())
	cut, block, down := s.cutAfter, s.block, s.down
	s.cutAfter, s.block = 0, false
	s.mu.Unlock()
	if down {
		return status.Error(codes.Unavailable, "controller down")
	}
	off := int64(req.GetOffset())
	if off > int64(len(b)) {
		return status.Error(codes.OutOfRange, "past the end")
	}
	var sent int64
	for first := true; first || off < int64(len(b)); first = false {
		if cut > 0 && sent >= cut {
			if block {
				<-stream.Context().Done()
				return stream.Context().Err()
			}
			return status.Error(codes.Unavailable, "controller going away")
		}
		data := append([]byte(nil), b[off:min(off+s.chunk, int64(len(b)))]...)
		sum := crc32.Checksum(data, castagnoli)
		s.mu.Lock()
		if s.flips > 0 && off == s.flipAt {
			s.flips--
			data[len(data)/2] ^= 0x20
		}
		s.sent += int64(len(data))
		s.mu.Unlock()
		if err := stream.Send(&artifactv1.FetchResponse{Offset: uint64(off), Data: data, Crc32C: sum, Size: uint64(len(b))}); err != nil {
			return err
		}
		off += int64(len(data))
		sent += int64(len(data))
	}
	return nil
}

func (s *server) stats() ([]uint64, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.offsets...), s.sent
}

type conns struct{ conn *grpc.ClientConn }

func (c conns) Conn(context.Context) (grpc.ClientConnInterface, error) { return c.conn, nil }

// tlsPair is a CA, a server certificate for 127.0.0.1 and a client
// certificate, as the controller and a node hold.
func tlsPair(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	now := time.Now()
	issue := func(tmpl, parent *x509.Certificate, pub any, signer any) *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	mk := func() *ecdsa.PrivateKey {
		k, err := pki.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, srvKey, nodeKey := mk(), mk(), mk()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	ca := issue(caTmpl, caTmpl, caKey.Public(), caKey)
	srv := issue(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "controller"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, srvKey.Public(), caKey)
	node := issue(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pki.NodeSubject("node-1"), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, nodeKey.Public(), caKey)
	return pki.ServerTLS(ca, tls.Certificate{Certificate: [][]byte{srv.Raw}, PrivateKey: srvKey, Leaf: srv}),
		pki.ClientTLS(ca, &tls.Certificate{Certificate: [][]byte{node.Raw}, PrivateKey: nodeKey, Leaf: node}, "127.0.0.1")
}

// rig is a server with blobs and a Fetcher that talks to it over mutual
// TLS on loopback.
type rig struct {
	srv  *server
	conn *grpc.ClientConn
	dir  string
}

func newRig(t testing.TB, blobs ...[]byte) *rig {
	t.Helper()
	srvTLS, cliTLS := tlsPair(t)
	s := &server{blobs: map[string][]byte{}, chunk: chunk}
	for _, b := range blobs {
		s.blobs[digestOf(b)] = b
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(srvTLS)))
	artifactv1.RegisterNodeArtifactServiceServer(gs, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cliTLS))}, transport.FlowControl()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rig{srv: s, conn: conn, dir: t.TempDir()}
}

func (r *rig) fetcher(t testing.TB) *Fetcher {
	t.Helper()
	f, err := New(Options{Dir: r.dir, Conns: conns{r.conn}, RetryWait: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (r *rig) partial(b []byte) string {
	return filepath.Join(r.dir, "sha256", strings.TrimPrefix(digestOf(b), "sha256:")+".partial")
}

func content(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s holds %d bytes, not the %d of the artifact", path, len(got), len(want))
	}
}

func TestFetchWholeAndCached(t *testing.T) {
	b := content(1<<20 + 5)
	empty := []byte{}
	r := newRig(t, b, empty)
	f := r.fetcher(t)
	res, err := f.Get(t.Context(), digestOf(b))
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, res.Path, b)
	if res.Cached || res.Received != int64(len(b)) || len(res.ResumedFrom) != 0 || res.Size != int64(len(b)) {
		t.Errorf("Get = %+v; want %d bytes received, no resume", res, len(b))
	}
	if _, err := os.Stat(r.partial(b)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the partial file is still there: %v", err)
	}
	// Cached: no call.
	path, err := f.Fetch(t.Context(), digestOf(b))
	if offsets, _ := r.srv.stats(); err != nil || path != res.Path || len(offsets) != 1 {
		t.Errorf("second Fetch = %s, %v after %d calls; want the cached path without a call", path, err, len(offsets))
	}
	res, err = f.Get(t.Context(), digestOf(empty))
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, res.Path, empty)
}

// A transfer cut half way goes on from where it stopped: the bytes sent
// again are fewer than the whole.
func TestFetchResumesACutTransfer(t *testing.T) {
	b := content(1 << 20)
	r := newRig(t, b)
	r.srv.cutAfter = 512 << 10
	res, err := r.fetcher(t).Get(t.Context(), digestOf(b))
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, res.Path, b)
	offsets, sent := r.srv.stats()
	if len(offsets) != 2 || offsets[0] != 0 || offsets[1] != 512<<10 {
		t.Errorf("calls asked for offsets %v; want 0, then 524288", offsets)
	}
	if sent != int64(len(b)) || res.Received != int64(len(b)) {
		t.Errorf("sent %d, received %d bytes for %d; a resume sends nothing twice", sent, res.Received, len(b))
	}
	if len(res.ResumedFrom) != 1 || res.ResumedFrom[0] != 512<<10 {
		t.Errorf("ResumedFrom = %v; want [524288]", res.ResumedFrom)
	}
}

// A controller that breaks every transfer before a byte: the fetch gives up
// after Attempts tries in a row, keeping its partial file.
func TestFetchGivesUpWithoutProgress(t *testing.T) {
	b := content(1 << 20)
	r := newRig(t, b)
	r.srv.down = true
	f, err := New(Options{Dir: r.dir, Conns: conns{r.conn}, Attempts: 2, RetryWait: time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Get(t.Context(), digestOf(b))
	if status.Code(errors.Unwrap(err)) != codes.Unavailable || !strings.Contains(err.Error(), "3 transfers in a row broke without bringing data") {
		t.Fatalf("Get from a controller that is down = %v; want Unavailable after 3 transfers", err)
	}
	if offsets, _ := r.srv.stats(); len(offsets) != 3 {
		t.Errorf("%d calls; want 3", len(offsets))
	}
}

// A fetch stopped half way (the agent stopped) leaves a partial file that
// the next Fetcher resumes, hashing what it holds.
func TestFetchResumesFromAPartialFile(t *testing.T) {
	b := content(1 << 20)
	r := newRig(t, b)
	r.srv.cutAfter, r.srv.block = 3*chunk, true
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		for {
			if st, err := os.Stat(r.partial(b)); err == nil && st.Size() == 3*chunk {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if _, err := r.fetcher(t).Get(ctx, digestOf(b)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get cut by its context = %v", err)
	}
	res, err := r.fetcher(t).Get(t.Context(), digestOf(b))
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, res.Path, b)
	if len(res.ResumedFrom) != 1 || res.ResumedFrom[0] != 3*chunk || res.Received != int64(len(b))-3*chunk {
		t.Errorf("Get = %+v; want resumed from %d, %d bytes received", res, 3*chunk, len(b)-3*chunk)
	}
	if offsets, _ := r.srv.stats(); offsets[len(offsets)-1] != 3*chunk {
		t.Errorf("calls asked for offsets %v; want the last at %d", offsets, 3*chunk)
	}
}

// A corrupted chunk is refused and its range asked for again; one
// corrupted on every try fails the fetch naming its offset.
func TestFetchRefusesCorruptedChunks(t *testing.T) {
	b := content(1 << 20)
	r := newRig(t, b)
	r.srv.flipAt, r.srv.flips = 5*chunk, 2
	res, err := r.fetcher(t).Get(t.Context(), digestOf(b))
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, res.Path, b)
	if offsets, _ := r.srv.stats(); len(offsets) != 3 || offsets[1] != 5*chunk || offsets[2] != 5*chunk {
		t.Errorf("calls asked for offsets %v; want 0 and twice %d", offsets, 5*chunk)
	}

	c := content(1 << 20)
	r = newRig(t, c)
	r.srv.flipAt, r.srv.flips = 7*chunk, 100
	_, err = r.fetcher(t).Get(t.Context(), digestOf(c))
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "offset 458752") || !strings.Contains(err.Error(), "failed its check 4 times") {
		t.Fatalf("Get with a chunk always corrupted = %v; want ErrCorrupt naming offset 458752 and 4 tries", err)
	}
	if st, err := os.Stat(r.partial(c)); err != nil || st.Size() != 7*chunk {
		t.Errorf("partial after the failure: %v, %v; want the %d bytes before the bad chunk", st, err, 7*chunk)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "sha256", strings.TrimPrefix(digestOf(c), "sha256:"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a corrupted artifact is in the cache: %v", err)
	}
}

// Content that hashes to another digest is deleted, never renamed into
// place; an unknown digest is NotFound and leaves nothing.
func TestFetchDigestMismatchAndNotFound(t *testing.T) {
	b := content(300 << 10)
	r := newRig(t)
	lie := digestOf([]byte("what the node asked for"))
	r.srv.blobs[lie] = b
	_, err := r.fetcher(t).Get(t.Context(), lie)
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), digestOf(b)) || !strings.Contains(err.Error(), "partial file is deleted") {
		t.Fatalf("Get of content with another digest = %v; want ErrDigestMismatch naming %s", err, digestOf(b))
	}
	unknown := digestOf([]byte("unknown"))
	_, err = r.fetcher(t).Get(t.Context(), unknown)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), unknown) {
		t.Fatalf("Get of an unknown digest = %v; want ErrNotFound naming it", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.dir, "sha256")); len(ents) != 0 {
		t.Errorf("cache after the failures holds %d files; want none", len(ents))
	}
	if _, err := r.fetcher(t).Get(t.Context(), "sha256:XYZ"); !errors.Is(err, ErrInvalidDigest) {
		t.Errorf("Get of a malformed digest = %v; want ErrInvalidDigest", err)
	}
	var none *Fetcher
	var src Source = none
	if _, err := src.Fetch(t.Context(), digestOf(b)); !errors.Is(err, ErrNoCache) {
		t.Errorf("Fetch on a nil *Fetcher = %v; want ErrNoCache", err)
	}
}

// Fetches of one digest at once make one transfer.
func TestFetchConcurrentOneTransfer(t *testing.T) {
	b := content(1 << 20)
	r := newRig(t, b)
	f := r.fetcher(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if path, err := f.Fetch(t.Context(), digestOf(b)); err != nil || path == "" {
				t.Errorf("Fetch = %q, %v", path, err)
			}
		}()
	}
	wg.Wait()
	if offsets, sent := r.srv.stats(); len(offsets) != 1 || sent != int64(len(b)) {
		t.Errorf("4 concurrent fetches made %d calls sending %d bytes; want one transfer", len(offsets), sent)
	}
}

// BenchmarkFetch: one Fetcher bringing 256 MiB from a server in the same
// process over mutual TLS on loopback, in 512 KiB chunks as the
// controller sends them; both sides' CPU counts.
//
//	go test ./agent/artifact -run '^$' -bench Fetch -benchtime=4x
func BenchmarkFetch(b *testing.B) {
	blob := content(256 << 20)
	r := newRig(b, blob)
	r.srv.chunk = 512 << 10
	digest := digestOf(blob)
	b.SetBytes(int64(len(blob)))
	for b.Loop() {
		r.dir = b.TempDir()
		if _, err := r.fetcher(b).Get(b.Context(), digest); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = os.RemoveAll(r.dir)
		b.StartTimer()
	}
}
