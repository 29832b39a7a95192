//go:build !unix

package tail

import "os"

// fileID is not available here: files have no device and inode numbers,
// so opening a file fails.
func fileID(os.FileInfo) (dev, ino uint64, ok bool) { return 0, 0, false }

const openFlags = os.O_RDONLY
