package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
)

// pushChunkBytes is the content in one push message, under the
// controller's 1 MiB message limit.
const pushChunkBytes = 512 << 10

// artifactClient dials the controller (once) for the ArtifactService.
func (a *app) artifactClient() (artifactv1.ArtifactServiceClient, error) {
	if _, err := a.fleet(); err != nil { // dials once
		return nil, err
	}
	return artifactv1.NewArtifactServiceClient(a.conn), nil
}

// artifactCall is fleetCall for the ArtifactService.
func artifactCall[Req, Resp any](a *app, ctx context.Context, method func(artifactv1.ArtifactServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	c, err := a.artifactClient()
	if err != nil {
		var zero Resp
		return zero, err
	}
	return call(a, ctx, func(ctx context.Context, req Req, opts ...grpc.CallOption) (Resp, error) {
		return method(c, ctx, req, opts...)
	}, req)
}

var artifactKinds = map[string]artifactv1.ArtifactKind{
	"binary": artifactv1.ArtifactKind_ARTIFACT_KIND_BINARY,
	"image":  artifactv1.ArtifactKind_ARTIFACT_KIND_IMAGE,
	"file":   artifactv1.ArtifactKind_ARTIFACT_KIND_FILE,
}

func artifactKind(k artifactv1.ArtifactKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "ARTIFACT_KIND_"))
}

func (a *app) artifactsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "artifacts",
		Short: "The controller's artifact store: binaries, image tarballs and files for nodes",
		Long: `Artifacts are content-addressed by SHA-256 and named name@version for a
platform. Agents fetch them over their own connection to the controller (the
artifact.fetch command stages one onto a node); no node can push or remove one.

A REF is a digest (sha256:<hex>) or name@version; --platform picks one when
name@version exists for several.`,
	}

	var p artifactv1.PushMetadata
	var kind string
	push := &cobra.Command{
		Use:   "push FILE --name NAME --version V",
		Short: "Store a file as an artifact and print its digest",
		Long: `Prints the digest alone on stdout, and progress on stderr (a bar on a
terminal, a final line otherwise). Pushing the same content under the same
name, version and platform again changes nothing. The push is not limited by
--timeout; Ctrl-C stops it and the controller keeps nothing of it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, ok := artifactKinds[kind]
			if !ok {
				return fmt.Errorf("--kind %q: want binary, image or file", kind)
			}
			p.Kind = k
			return a.push(cmd.Context(), args[0], &p, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	push.Flags().StringVar(&p.Name, "name", "", "artifact name, e.g. kubelet")
	push.Flags().StringVar(&p.Version, "version", "", "artifact version, e.g. v1.37.2")
	push.Flags().StringVar(&p.Platform, "platform", "linux/amd64", "os/arch the artifact is for")
	push.Flags().StringVar(&kind, "kind", "file", "binary, image (docker save or OCI layout tarball) or file")
	push.Flags().StringVar(&p.ExpectedSha256, "expected", "", "the file's SHA-256: the controller refuses content that hashes otherwise")
	_ = push.MarkFlagRequired("name")
	_ = push.MarkFlagRequired("version")

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List artifacts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allArtifacts(a, cmd.Context())
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tVERSION\tPLATFORM\tKIND\tSIZE\tDIGEST\tAGE\tPUSHED BY")
				for _, x := range resp.GetArtifacts() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.GetName(), x.GetVersion(), x.GetPlatform(), artifactKind(x.GetKind()), sizeString(int64(x.GetSize())), shortDigest(x.GetDigest()), age(x.GetCreatedAt(), now), dash(x.GetPushedBy()))
				}
			})
		},
	}
	listOut.add(list)

	var getOut outputFlag
	var getPlatform string
	get := &cobra.Command{
		Use:   "get REF",
		Short: "Show one artifact",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := getOut.check(); err != nil {
				return err
			}
			resp, err := artifactCall(a, cmd.Context(), artifactv1.ArtifactServiceClient.GetArtifact, &artifactv1.GetArtifactRequest{Ref: &artifactv1.ArtifactRef{Ref: args[0], Platform: getPlatform}})
			if err != nil {
				return err
			}
			return getOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				x := resp.GetArtifact()
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				row("Name", x.GetName())
				row("Version", x.GetVersion())
				row("Platform", x.GetPlatform())
				row("Kind", artifactKind(x.GetKind()))
				row("Size", fmt.Sprintf("%s (%d bytes)", sizeString(int64(x.GetSize())), x.GetSize()))
				row("Digest", x.GetDigest())
				row("Pushed", age(x.GetCreatedAt(), time.Now())+" ago by "+dash(x.GetPushedBy()))
			})
		},
	}
	get.Flags().StringVar(&getPlatform, "platform", "", "the platform, when name@version exists for several")
	getOut.add(get)

	var rmPlatform string
	rm := &cobra.Command{
		Use:   "rm REF",
		Short: "Remove an artifact and its content (nodes keep what they fetched)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := artifactCall(a, cmd.Context(), artifactv1.ArtifactServiceClient.RemoveArtifact, &artifactv1.RemoveArtifactRequest{Ref: &artifactv1.ArtifactRef{Ref: args[0], Platform: rmPlatform}})
			if err != nil {
				return err
			}
			x := resp.GetArtifact()
			fmt.Fprintf(cmd.OutOrStdout(), "artifact %s@%s (%s) removed: %s\n", x.GetName(), x.GetVersion(), x.GetPlatform(), x.GetDigest())
			return nil
		},
	}
	rm.Flags().StringVar(&rmPlatform, "platform", "", "the platform, when name@version exists for several")
	cmd.AddCommand(push, list, get, rm)
	return cmd
}

// push streams the file at path to the controller and prints its digest.
// It hashes what it sends, so the digest the controller answers is checked
// here too.
func (a *app) push(ctx context.Context, path string, md *artifactv1.PushMetadata, stdout, stderr io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	md.Size = uint64(st.Size())
	bar := newProgress(stderr, st.Size())
	resp, err := a.pushContent(ctx, f, md, bar)
	if err != nil {
		if errors.Is(err, errContent) {
			return fmt.Errorf("%s: %w", path, err)
		}
		return err
	}
	x := resp.GetArtifact()
	note := ""
	if resp.GetAlreadyStored() {
		note = " (already stored; nothing changed)"
	}
	bar.done(fmt.Sprintf("pushed %s@%s (%s, %s)%s", x.GetName(), x.GetVersion(), x.GetPlatform(), artifactKind(x.GetKind()), note))
	fmt.Fprintln(stdout, x.GetDigest())
	return nil
}

// errContent marks a push that failed reading its content, not at the
// controller.
var errContent = errors.New("reading the content")

// pushContent streams md.Size bytes of content to the controller, counting
// them on bar, and checks the digest the controller answers against what
// was sent. A read error (wrapping errContent) cancels the push, so the
// controller keeps nothing of it.
func (a *app) pushContent(ctx context.Context, content io.Reader, md *artifactv1.PushMetadata, bar *progress) (*artifactv1.PushArtifactResponse, error) {
	c, err := a.artifactClient()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.PushArtifact(ctx)
	if err != nil {
		return nil, statusErr(err)
	}
	h := sha256.New()
	sendErr := stream.Send(&artifactv1.PushArtifactRequest{Msg: &artifactv1.PushArtifactRequest_Metadata{Metadata: md}})
	buf := make([]byte, pushChunkBytes)
	for sendErr == nil {
		n, err := io.ReadFull(content, buf)
		if n > 0 {
			h.Write(buf[:n])
			// Send does not keep the message once it returns.
			sendErr = stream.Send(&artifactv1.PushArtifactRequest{Msg: &artifactv1.PushArtifactRequest_Chunk{Chunk: buf[:n]}})
			bar.add(int64(n))
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			bar.abort()
			return nil, fmt.Errorf("%w: %w", errContent, err)
		}
	}
	// A send that failed with io.EOF means the controller ended the push
	// early (it refused it); its answer says why.
	if sendErr != nil && !errors.Is(sendErr, io.EOF) {
		bar.abort()
		return nil, statusErr(sendErr)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		bar.abort()
		return nil, statusErr(err)
	}
	x := resp.GetArtifact()
	if want := "sha256:" + hex.EncodeToString(h.Sum(nil)); x.GetDigest() != want {
		bar.abort()
		return nil, fmt.Errorf("the controller stored %s@%s as %s, but what was sent hashes to %s: remove it ('budctl artifacts rm %s') and push again", md.GetName(), md.GetVersion(), x.GetDigest(), want, x.GetDigest())
	}
	return resp, nil
}

func statusErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

// progress draws a push's progress on a terminal: a bar redrawn at most
// ten times a second. Elsewhere (a log, a pipe) it prints only the final
// line.
type progress struct {
	w            io.Writer
	tty          bool
	total, sent  int64
	start, drawn time.Time
}

func newProgress(w io.Writer, total int64) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, tty: ok && term.IsTerminal(int(f.Fd())), total: total, start: time.Now()}
}

func (p *progress) add(n int64) {
	p.sent += n
	if !p.tty || time.Since(p.drawn) < 100*time.Millisecond {
		return
	}
	p.drawn = time.Now()
	const width = 30
	frac := 1.0
	if p.total > 0 {
		frac = float64(p.sent) / float64(p.total)
	}
	full := int(frac * width)
	bar := strings.Repeat("=", full) + strings.Repeat(" ", width-full)
	fmt.Fprintf(p.w, "\r[%s] %3.0f%% %s / %s  %s/s ", bar, 100*frac, sizeString(p.sent), sizeString(p.total), sizeString(int64(p.rate())))
}

func (p *progress) rate() float64 {
	s := time.Since(p.start).Seconds()
	if s <= 0 {
		return 0
	}
	return float64(p.sent) / s
}

// line prints a line of its own above the bar on a terminal (the next add
// draws the bar again); elsewhere nothing, the final line says it all.
func (p *progress) line(s string) {
	if !p.tty {
		return
	}
	if !p.drawn.IsZero() {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, s)
}

// abort ends a drawn bar's line, so an error prints on its own.
func (p *progress) abort() {
	if p.tty && !p.drawn.IsZero() {
		fmt.Fprintln(p.w)
	}
}

// done prints the final line: what was pushed, how much, how fast.
func (p *progress) done(what string) {
	if p.tty && !p.drawn.IsZero() {
		fmt.Fprint(p.w, "\r\033[K")
	}
	el := time.Since(p.start)
	fmt.Fprintf(p.w, "%s: %s in %s (%.1f MiB/s)\n", what, sizeString(p.sent), el.Round(time.Millisecond), p.rate()/(1<<20))
}

// shortDigest is a digest's first 12 hex digits, as container tools show
// image ids.
func shortDigest(d string) string {
	if h, ok := strings.CutPrefix(d, "sha256:"); ok && len(h) > 12 {
		return "sha256:" + h[:12]
	}
	return d
}

func sizeString(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	if n < 1<<10 {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n)/(1<<10), 0
	for v >= 1<<10 && u < len(units)-1 {
		v, u = v/(1<<10), u+1
	}
	return fmt.Sprintf("%.1f %s", v, units[u])
}

// allArtifacts lists every artifact, following the pages.
func allArtifacts(a *app, ctx context.Context) (*artifactv1.ListArtifactsResponse, error) {
	return allPages(func(tok string) (*artifactv1.ListArtifactsResponse, error) {
		return artifactCall(a, ctx, artifactv1.ArtifactServiceClient.ListArtifacts, &artifactv1.ListArtifactsRequest{PageToken: tok})
	}, func(all, p *artifactv1.ListArtifactsResponse) {
		all.Artifacts, all.NextPageToken = append(all.Artifacts, p.GetArtifacts()...), p.GetNextPageToken()
	})
}
