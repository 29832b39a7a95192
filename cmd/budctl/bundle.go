package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/bundle"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
)

func (a *app) bundleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Signed offline bundles: packages, plugins and artifacts carried into an air-gapped site",
		Long: `A bundle is one tar file: the packages, plugin binaries and artifacts a
manifest lists, and an index of every file with its SHA-256, signed with an
ed25519 key. It is checked with the public key alone, and push loads it into
the controller's artifact store only once it verified.`,
	}

	var privFile, pubFile string
	keygen := &cobra.Command{
		Use:   "keygen --private FILE --public FILE",
		Short: "Make an ed25519 key pair for signing bundles (never overwrites a file)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := bundle.GenerateKey(privFile, pubFile)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s: private %s (keep it off the site), public %s\n", bundle.KeyID(pub), privFile, pubFile)
			return nil
		},
	}
	keygen.Flags().StringVar(&privFile, "private", "", "file for the private key (written 0600)")
	keygen.Flags().StringVar(&pubFile, "public", "", "file for the public key")
	_ = keygen.MarkFlagRequired("private")
	_ = keygen.MarkFlagRequired("public")

	var manifestFile, keyFile, outFile string
	create := &cobra.Command{
		Use:   "create --manifest FILE --key PRIVATE -o BUNDLE.tar",
		Short: "Write a signed bundle of what a manifest lists",
		Long: `The manifest is YAML, strict (unknown keys are errors), paths relative to it:

  packages:
    - {name: bud-agent.deb, version: 1.2.3, platform: linux/amd64, path: dist/bud-agent_1.2.3_amd64.deb}
  plugins:
    - {name: bud-provider-vsphere, version: v1.2.3, path: bin/bud-provider-vsphere}
  artifacts:
    - {name: kubelet, version: v1.37.2, platform: linux/amd64, path: ./kubelet}
    - {name: bud-images, version: v1.2.3, kind: image, path: ./bud-images.tar.gz}

Each entry becomes an artifact (platform linux/amd64 and kind file by default,
binary for plugins). The bundle is written beside -o and renamed into place,
so a failed create leaves nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return createBundle(manifestFile, keyFile, outFile, cmd.OutOrStdout())
		},
	}
	create.Flags().StringVar(&manifestFile, "manifest", "", "the manifest (YAML)")
	create.Flags().StringVar(&keyFile, "key", "", "the private key of budctl bundle keygen")
	create.Flags().StringVarP(&outFile, "output", "o", "", "the bundle to write")
	for _, f := range []string{"manifest", "key", "output"} {
		_ = create.MarkFlagRequired(f)
	}

	var verifyKey string
	verify := &cobra.Command{
		Use:   "verify BUNDLE --key PUBLIC",
		Short: "Check a bundle's signature and every file in it; exit 1 naming the first bad one",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			idx, err := verifyBundle(args[0], verifyKey)
			if err != nil {
				return err
			}
			var size int64
			for _, f := range idx.Files {
				size += f.Size
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: verified: %d files, %s, signed %s\n", args[0], len(idx.Files), sizeString(size), idx.Created.Format(time.RFC3339))
			return nil
		},
	}
	verify.Flags().StringVar(&verifyKey, "key", "", "the public key the bundle must be signed with")
	_ = verify.MarkFlagRequired("key")

	var pushKey string
	push := &cobra.Command{
		Use:   "push BUNDLE --key PUBLIC",
		Short: "Verify a bundle, then load every file into the controller's artifact store",
		Long: `push reads the whole bundle and checks it first; a bundle that fails
loads nothing. Artifacts the controller stores already (same name, version,
platform and content) are skipped, so a push cut short is run again to go on
where it stopped. A name, version and platform the controller holds with
other content stops the push before anything is loaded. Progress goes to
stderr (a bar on a terminal); stdout has one line per file. Not limited by
--timeout.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.pushBundle(cmd.Context(), args[0], pushKey, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	push.Flags().StringVar(&pushKey, "key", "", "the public key the bundle must be signed with")
	_ = push.MarkFlagRequired("key")

	cmd.AddCommand(keygen, create, verify, push)
	return cmd
}

func createBundle(manifestFile, keyFile, outFile string, stdout io.Writer) error {
	m, err := bundle.LoadManifest(manifestFile)
	if err != nil {
		return err
	}
	key, err := bundle.LoadPrivateKey(keyFile)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(outFile), ".bundle-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	idx, err := bundle.Create(tmp, m, key, time.Now())
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), outFile); err != nil {
		return err
	}
	var size int64
	for _, f := range idx.Files {
		size += f.Size
	}
	fmt.Fprintf(stdout, "%s: %d files, %s, signed with key %s\n", outFile, len(idx.Files), sizeString(size), bundle.KeyID(key.Public().(ed25519.PublicKey)))
	return nil
}

// verifyBundle reads the whole bundle at path and checks it with the public
// key in keyFile.
func verifyBundle(path, keyFile string) (bundle.Index, error) {
	pub, err := bundle.LoadPublicKey(keyFile)
	if err != nil {
		return bundle.Index{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return bundle.Index{}, err
	}
	defer f.Close()
	idx, err := bundle.Verify(f, pub)
	if err != nil {
		return bundle.Index{}, fmt.Errorf("%s: %w", path, err)
	}
	return idx, nil
}

// pushBundle verifies the bundle, then pushes each file the controller does
// not hold yet, reading the bundle a second time. That second read is
// checked too, and each push names the content's SHA-256, so a file that
// changed after the verification is refused by the controller, not stored.
func (a *app) pushBundle(ctx context.Context, path, keyFile string, stdout, stderr io.Writer) error {
	idx, err := verifyBundle(path, keyFile)
	if err != nil {
		return fmt.Errorf("%w; nothing was loaded", err)
	}
	listCtx, cancel := context.WithTimeout(ctx, a.timeout)
	resp, err := allArtifacts(a, listCtx)
	cancel()
	if err != nil {
		return err
	}
	stored := map[string]string{}
	for _, x := range resp.GetArtifacts() {
		stored[x.GetName()+"@"+x.GetVersion()+" "+x.GetPlatform()] = x.GetDigest()
	}
	skip := map[string]bool{}
	var conflicts []string
	var total int64
	for _, f := range idx.Files {
		switch d, ok := stored[f.Name+"@"+f.Version+" "+f.Platform]; {
		case !ok:
			total += f.Size
		case d == f.Digest():
			skip[f.Path] = true
		default:
			conflicts = append(conflicts, fmt.Sprintf("%s is %s on the controller, %s in the bundle", f.Ref(), d, f.Digest()))
		}
	}
	if len(conflicts) > 0 {
		return fmt.Errorf("nothing was loaded: %s; remove those artifacts ('budctl artifacts rm NAME@VERSION --platform P') or bundle under a new version", strings.Join(conflicts, "; "))
	}

	pub, err := bundle.LoadPublicKey(keyFile)
	if err != nil {
		return err
	}
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	r, err := bundle.Open(file, pub)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	bar := newProgress(stderr, total)
	pushed, skipped := 0, 0
	for {
		f, content, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			bar.abort()
			return fmt.Errorf("%s changed since it verified: %w (%d loaded before it)", path, err, pushed)
		}
		if skip[f.Path] {
			skipped++
			bar.line(fmt.Sprintf("%s %s: already stored", f.Ref(), f.Digest()))
			fmt.Fprintf(stdout, "skipped %s %s (already stored)\n", f.Ref(), f.Digest())
			continue
		}
		kind, ok := artifactKinds[f.Kind]
		if !ok {
			return fmt.Errorf("%s: %s has kind %q, which this budctl does not know", path, f.Path, f.Kind)
		}
		md := &artifactv1.PushMetadata{Name: f.Name, Version: f.Version, Platform: f.Platform, Kind: kind, Size: uint64(f.Size), ExpectedSha256: f.SHA256}
		if _, err := a.pushContent(ctx, content, md, bar); err != nil {
			return fmt.Errorf("push %s from %s: %w (%d loaded before it; run push again to go on)", f.Ref(), path, err, pushed)
		}
		pushed++
		bar.line(fmt.Sprintf("%s %s: loaded", f.Ref(), f.Digest()))
		fmt.Fprintf(stdout, "loaded %s %s\n", f.Ref(), f.Digest())
	}
	bar.done(fmt.Sprintf("bundle %s: %d loaded, %d already stored", path, pushed, skipped))
	return nil
}
