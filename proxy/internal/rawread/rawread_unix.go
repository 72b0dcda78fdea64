//go:build unix

package rawread

import (
	"io"
	"os"
	"syscall"
)

// Supported reports whether New can return a Reader on this platform.
const Supported = true

// Read waits until the socket is readable (or its read deadline passes,
// or it is closed) and calls read, again each time the socket turns out
// empty. The error is the wait's (a deadline or a closed connection, as
// net.Conn.Read reports them), read's (a syscall.Errno wrapped as
// *os.SyscallError), or io.EOF when read returned 0 and no error.
//
// read is tried before any wait, so a socket that holds bytes costs no
// more system calls than net.Conn.Read, and an empty one no more either
// (read, wait, read).
func (r *Reader) Read() (int, error) {
	r.n, r.err = 0, nil
	err := r.rc.Read(r.fn)
	n, rerr := r.n, r.err
	r.err = nil
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		if errno, ok := rerr.(syscall.Errno); ok {
			return n, os.NewSyscallError("read", errno)
		}
		return n, rerr
	case n <= 0:
		return 0, io.EOF
	}
	return n, nil
}

// TryRead is Read without the wait: ErrWouldBlock when the socket holds
// nothing (read gave its buffer back).
func (r *Reader) TryRead() (int, error) {
	r.n, r.err = 0, nil
	err := r.rc.Read(r.once)
	n, rerr := r.n, r.err
	r.err = nil
	switch {
	case err != nil:
		return 0, err
	case Again(rerr):
		return 0, ErrWouldBlock
	case rerr != nil:
		if errno, ok := rerr.(syscall.Errno); ok {
			return n, os.NewSyscallError("read", errno)
		}
		return n, rerr
	case n <= 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *Reader) tryOnce(fd uintptr) bool {
	for {
		r.n, r.err = r.read(int(fd))
		if r.err != syscall.EINTR {
			return true
		}
	}
}

// try is the RawConn callback: false (wait) while the socket is empty.
func (r *Reader) try(fd uintptr) bool {
	for {
		r.n, r.err = r.read(int(fd))
		if r.err != syscall.EINTR {
			break
		}
	}
	return !Again(r.err)
}

// Again reports whether err is a non-blocking read that found nothing.
func Again(err error) bool { return err == syscall.EAGAIN || err == syscall.EWOULDBLOCK }

// ReadFD reads from fd into p once, without blocking.
func ReadFD(fd int, p []byte) (int, error) {
	n, err := syscall.Read(fd, p)
	if n < 0 {
		n = 0
	}
	return n, err
}
