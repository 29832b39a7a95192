//go:build unix

package tail

import (
	"os"
	"syscall"
)

// fileID returns the device and inode numbers of fi.
func fileID(fi os.FileInfo) (dev, ino uint64, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return uint64(st.Dev), uint64(st.Ino), true //nolint:unconvert // int32 on some platforms
}

// openFlags opens without blocking on a FIFO (no effect on regular files).
const openFlags = os.O_RDONLY | syscall.O_NONBLOCK
