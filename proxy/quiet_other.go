//go:build !unix

package proxy

// quiet has no non-blocking peek here: it trusts the connection, so only
// bytes already buffered keep it from reuse (unix systems check the socket
// too; see quiet_unix.go).
func quiet(c *upConn) bool { return true }

func (c *upConn) peekFD(fd uintptr) bool { return true }
