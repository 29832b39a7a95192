// Package bundle is the offline bundle's format, shared by whoever writes
// one and whoever checks one: a plain tar whose first entry, index.json,
// lists every other file with its size and SHA-256 and what it is (a
// package, a plugin binary, an artifact), and whose second, index.sig, is an
// ed25519 signature of index.json's bytes. An operator carries the tarball
// into an air-gapped datacenter and checks it there against the public key
// alone: the signature proves the index, the index proves each file.
//
// Layout:
//
//	index.json                                   Index (JSON), signed
//	index.sig                                    Signature (JSON)
//	files/<name>/<version>/<os>-<arch>/<base>    each file, in the index's order
//
// The tar is not compressed: packages and image tarballs are compressed
// already, and a plain tar is read in one pass, checked as it streams.
package bundle

import (
	"archive/tar"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"
	"time"
)

// Format names this layout in the index.
const Format = "budfleet-bundle/v1"

// Names of the bundle's first two entries.
const (
	IndexName     = "index.json"
	SignatureName = "index.sig"
)

// maxIndexBytes bounds what is read of index.json and index.sig before
// their signature is checked: a bundle of thousands of files has an index
// of a few hundred KiB.
const maxIndexBytes = 16 << 20

// Sections of a bundle: what a file is for.
const (
	SectionPackage  = "package"
	SectionPlugin   = "plugin"
	SectionArtifact = "artifact"
)

// Index is the signed list of a bundle's files.
type Index struct {
	Format  string    `json:"format"`
	Created time.Time `json:"created"`
	Files   []File    `json:"files"`
}

// File is one file of a bundle and the artifact it becomes in the
// controller's store.
type File struct {
	// Path is the file's name in the tarball.
	Path string `json:"path"`
	// SHA256 is the content's digest in lower-case hex.
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	Section string `json:"section"`
	Name    string `json:"name"`
	Version string `json:"version"`
	// Platform is os/arch, e.g. linux/amd64.
	Platform string `json:"platform"`
	// Kind is binary, image or file, as the artifact store has them.
	Kind string `json:"kind"`
}

// Ref is the file's artifact as name@version (platform).
func (f File) Ref() string { return fmt.Sprintf("%s@%s (%s)", f.Name, f.Version, f.Platform) }

// Digest is the file's artifact digest, sha256:<hex>.
func (f File) Digest() string { return "sha256:" + f.SHA256 }

// Signature is index.sig: who signed the index, and the signature.
type Signature struct {
	// KeyID names the signing key (KeyID of its public half). It is not
	// signed; it only lets an error say that another key signed.
	KeyID string `json:"key_id"`
	// Ed25519 is the signature of index.json's bytes.
	Ed25519 []byte `json:"ed25519"`
}

// KeyID is a short fingerprint of a public key: sha256: and the first 16
// hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// filePath is where a file of an artifact goes in the tarball.
func filePath(name, version, platform, base string) string {
	return path.Join("files", name, version, strings.ReplaceAll(platform, "/", "-"), base)
}

// Errors a bundle's check ends with; the message names the file.
var (
	// ErrSignature: the index's signature does not verify with the key
	// given (another key signed it, or the index or signature was altered).
	ErrSignature = errors.New("bad bundle signature")
	// ErrFile: a file's content is not what the signed index says (altered,
	// cut short, missing, or not in the index at all).
	ErrFile = errors.New("bad file in bundle")
	// ErrFormat: the tarball is not a bundle, or is damaged.
	ErrFormat = errors.New("not a readable bundle")
)

// Reader reads a bundle in one pass: Open checks the index's signature, and
// Next hands out each file in turn as a reader that fails, naming the file,
// when its content does not match the index. Nothing read from a file
// counts until its reader reached io.EOF without an error.
type Reader struct {
	tr    *tar.Reader
	index Index
	next  int
	cur   *fileReader
}

// Open reads and checks the index of the bundle r holds against pub. It
// reads nothing past the index and its signature.
func Open(r io.Reader, pub ed25519.PublicKey) (*Reader, error) {
	tr := tar.NewReader(r)
	indexBytes, err := readSmall(tr, IndexName)
	if err != nil {
		return nil, err
	}
	sigBytes, err := readSmall(tr, SignatureName)
	if err != nil {
		return nil, err
	}
	var sig Signature
	if err := strictJSON(sigBytes, &sig); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrFormat, SignatureName, err)
	}
	if !ed25519.Verify(pub, indexBytes, sig.Ed25519) {
		if sig.KeyID != "" && sig.KeyID != KeyID(pub) {
			return nil, fmt.Errorf("%w: the bundle was signed by key %s, not by the public key given (%s): pass the key its maker published", ErrSignature, sig.KeyID, KeyID(pub))
		}
		return nil, fmt.Errorf("%w: %s does not verify with public key %s: the index or its signature was altered after signing; get the bundle again", ErrSignature, SignatureName, KeyID(pub))
	}
	var idx Index
	if err := strictJSON(indexBytes, &idx); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrFormat, IndexName, err)
	}
	if idx.Format != Format {
		return nil, fmt.Errorf("%w: %s has format %q; this build reads %q", ErrFormat, IndexName, idx.Format, Format)
	}
	return &Reader{tr: tr, index: idx}, nil
}

// readSmall reads the next entry, which must be called name.
func readSmall(tr *tar.Reader, name string) ([]byte, error) {
	h, err := tr.Next()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: it ends before %s (an empty or truncated file?)", ErrFormat, name)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v (truncated or not a tar file?)", ErrFormat, name, err)
	}
	if h.Name != name {
		return nil, fmt.Errorf("%w: its entry is %q where %s belongs", ErrFormat, h.Name, name)
	}
	if h.Size > maxIndexBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes; at most %d", ErrFormat, name, h.Size, maxIndexBytes)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v (truncated?)", ErrFormat, name, err)
	}
	return b, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// Index is the bundle's signed index.
func (r *Reader) Index() Index { return r.index }

// Next returns the next file and a reader of its content that checks it:
// it fails with ErrFile when the content is longer, shorter or hashes other
// than the index says. After the last file Next returns io.EOF, once it has
// made sure nothing follows. Next fails when the bundle holds a file the
// index does not list, or in another order, or when the previous file was
// not read to its end (it is read and checked now).
func (r *Reader) Next() (File, io.Reader, error) {
	if r.cur != nil {
		if _, err := io.Copy(io.Discard, r.cur); err != nil {
			return File{}, nil, err
		}
		r.cur = nil
	}
	h, err := r.tr.Next()
	if r.next == len(r.index.Files) {
		if errors.Is(err, io.EOF) {
			return File{}, nil, io.EOF
		}
		if err != nil {
			return File{}, nil, fmt.Errorf("%w: after its last file: %v", ErrFormat, err)
		}
		return File{}, nil, fmt.Errorf("%w: %s is in the bundle but not in its signed index", ErrFile, h.Name)
	}
	f := r.index.Files[r.next]
	if errors.Is(err, io.EOF) {
		return File{}, nil, fmt.Errorf("%w: %s is missing: the bundle ends after %d of the index's %d files (truncated?)", ErrFile, f.Path, r.next, len(r.index.Files))
	}
	if err != nil {
		return File{}, nil, fmt.Errorf("%w: %s: %v (truncated?)", ErrFile, f.Path, err)
	}
	if h.Name != f.Path {
		return File{}, nil, fmt.Errorf("%w: found %s where the signed index has %s", ErrFile, h.Name, f.Path)
	}
	r.next++
	r.cur = &fileReader{f: f, r: r.tr, h: sha256.New(), header: h.Size}
	return f, r.cur, nil
}

// fileReader checks one file's content as it is read.
type fileReader struct {
	f      File
	r      io.Reader
	h      hash.Hash
	header int64
	n      int64
	err    error
}

func (fr *fileReader) Read(p []byte) (int, error) {
	if fr.err != nil {
		return 0, fr.err
	}
	n, err := fr.r.Read(p)
	fr.n += int64(n)
	fr.h.Write(p[:n])
	switch {
	case fr.n > fr.f.Size:
		fr.err = fmt.Errorf("%w: %s is longer than the %d bytes the signed index says", ErrFile, fr.f.Path, fr.f.Size)
	case errors.Is(err, io.EOF):
		if fr.n < fr.f.Size {
			how := "its tar entry is shorter"
			if fr.header >= fr.f.Size {
				how = "the bundle is truncated"
			}
			fr.err = fmt.Errorf("%w: %s ends after %d of its %d bytes (%s)", ErrFile, fr.f.Path, fr.n, fr.f.Size, how)
		} else if got := hex.EncodeToString(fr.h.Sum(nil)); got != fr.f.SHA256 {
			fr.err = fmt.Errorf("%w: %s has sha256 %s; the signed index says %s: it was altered or damaged, get the bundle again", ErrFile, fr.f.Path, got, fr.f.SHA256)
		} else {
			fr.err = io.EOF
		}
	case errors.Is(err, io.ErrUnexpectedEOF):
		fr.err = fmt.Errorf("%w: %s ends after %d of its %d bytes (the bundle is truncated)", ErrFile, fr.f.Path, fr.n, fr.f.Size)
	case err != nil:
		fr.err = fmt.Errorf("%w: %s: %v", ErrFile, fr.f.Path, err)
	}
	if fr.err != nil {
		return n, fr.err
	}
	return n, nil
}

// Verify reads the whole bundle and checks it against pub: the index's
// signature, then every file. It returns the index, or the first problem.
func Verify(r io.Reader, pub ed25519.PublicKey) (Index, error) {
	br, err := Open(r, pub)
	if err != nil {
		return Index{}, err
	}
	for {
		_, content, err := br.Next()
		if errors.Is(err, io.EOF) {
			return br.Index(), nil
		}
		if err != nil {
			return Index{}, err
		}
		if _, err := io.Copy(io.Discard, content); err != nil {
			return Index{}, err
		}
	}
}
