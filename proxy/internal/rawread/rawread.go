// Package rawread reads from a socket without holding a read buffer while
// it waits for bytes, so that an idle connection costs its goroutine and
// descriptor only: the caller takes a buffer when bytes are there and can
// give it back as soon as they are consumed.
package rawread

import (
	"errors"
	"net"
	"syscall"
)

// ErrWouldBlock is TryRead's error when the socket holds nothing.
var ErrWouldBlock = errors.New("rawread: nothing to read")

// Reader reads one socket; see New. It is for one goroutine at a time.
type Reader struct {
	rc   syscall.RawConn
	read func(fd int) (int, error)
	fn   func(fd uintptr) bool // bound once: a Read allocates nothing
	once func(fd uintptr) bool // TryRead's
	n    int
	err  error
}

// New returns a Reader of the socket under c that reads with read, or nil
// when c has none that a Reader can use (TLS and other wrapped
// connections, or a platform without Supported): such connections are
// read the usual way, buffer held.
//
// read(fd) reads once without blocking (ReadFD does). It takes its buffer
// when called and gives it back before it returns an error that satisfies
// Again: the wait in between holds none.
func New(c net.Conn, read func(fd int) (int, error)) *Reader {
	if !Supported {
		return nil
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &Reader{rc: rc, read: read}
	r.fn, r.once = r.try, r.tryOnce
	return r
}
