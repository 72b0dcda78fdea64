//go:build unix

package proxy

import (
	"syscall"
)

// quiet reports whether c's socket has nothing to read and is open, with
// one non-blocking peek (recv MSG_PEEK|MSG_DONTWAIT) that takes nothing. A
// connection without a raw socket (not a *net.TCPConn) is trusted.
func quiet(c *upConn) bool {
	if c.rawConn == nil {
		return true
	}
	c.peekOpen = false
	err := c.rawConn.Read(c.peekRead)
	return err == nil && c.peekOpen
}

// peekFD is quiet's syscall.RawConn.Read callback, made once per connection
// (a closure per peek would allocate).
func (c *upConn) peekFD(fd uintptr) bool {
	n, _, err := syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	c.peekOpen = n <= 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
	return true // never wait
}
