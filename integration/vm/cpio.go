package vm

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
)

// cpioWriter writes the "newc" (SVR4, no CRC) cpio format the kernel unpacks
// an initramfs from (Documentation/driver-api/early-userspace/buffer-format.rst):
// a 110-byte ASCII header of hex fields, the NUL-terminated name and the
// data, each padded to a multiple of 4 bytes, closed by a "TRAILER!!!" entry.
type cpioWriter struct {
	w     *bufio.Writer
	off   int64
	inode uint32
	err   error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), inode: 1}
}

const (
	cpioModeDir     = 0o040000
	cpioModeFile    = 0o100000
	cpioModeSymlink = 0o120000
)

func (c *cpioWriter) header(name string, mode uint32, size int64) {
	if c.err != nil {
		return
	}
	if size > 0xffffffff {
		c.err = fmt.Errorf("cpio: %s: %d bytes is too large for newc", name, size)
		return
	}
	c.inode++
	nlink := 1
	if mode&0o170000 == cpioModeDir {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check.
	h := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(h))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// Dir adds a directory; names are relative to the archive root ("bin").
func (c *cpioWriter) Dir(name string, perm fs.FileMode) {
	c.header(name, cpioModeDir|uint32(perm.Perm()), 0)
}

// File adds a regular file with the given content.
func (c *cpioWriter) File(name string, perm fs.FileMode, data []byte) {
	c.header(name, cpioModeFile|uint32(perm.Perm()), int64(len(data)))
	c.write(data)
	c.pad()
}

// FileFrom adds a regular file of size bytes read from r.
func (c *cpioWriter) FileFrom(name string, perm fs.FileMode, size int64, r io.Reader) {
	c.header(name, cpioModeFile|uint32(perm.Perm()), size)
	if c.err != nil {
		return
	}
	n, err := io.CopyN(c.w, r, size)
	c.off += n
	if err != nil {
		c.err = fmt.Errorf("cpio: %s: %w", name, err)
		return
	}
	c.pad()
}

// Symlink adds a symbolic link name -> target.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, cpioModeSymlink|0o777, int64(len(target)))
	c.write([]byte(target))
	c.pad()
}

// Close writes the trailer and flushes; it returns the first error met.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0)
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
