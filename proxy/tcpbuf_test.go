package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/internal/rawread"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// A copy direction holds its 64 KiB buffer only while bytes flow: not
// while it waits, and not after a read that drained the socket.
func TestCopyReaderHoldsNoBufferWhileIdle(t *testing.T) {
	if !rawread.Supported {
		t.Skip("no raw reads on this platform: buffers are held")
	}
	a, b := tcpPair(t)
	r := newCopyReader(b)
	defer r.release()
	if r.raw == nil {
		t.Fatal("a plain TCP connection is not read raw")
	}
	// A wait that times out holds nothing.
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := r.read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("have %v, want a deadline error", err)
	}
	if r.buf != nil {
		t.Fatal("buffer held after a wait that found nothing")
	}
	b.SetReadDeadline(time.Time{})
	// Bytes: taken, then given back once drained.
	msg := []byte("hello")
	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	got, err := r.read()
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("have %q, %v; want %q", got, err, msg)
	}
	if r.buf == nil {
		t.Fatal("no buffer behind the bytes read")
	}
	r.drained(len(got))
	if r.buf != nil {
		t.Fatal("buffer held after a read that drained the socket")
	}
	// EOF holds nothing either.
	a.(*net.TCPConn).CloseWrite()
	if _, err := r.read(); err != io.EOF {
		t.Fatalf("have %v, want EOF", err)
	}
	if r.buf != nil {
		t.Fatal("buffer held after EOF")
	}
}

// Bulk data larger than the buffer arrives whole and in order through
// raw reads.
func TestCopyReaderBulk(t *testing.T) {
	a, b := tcpPair(t)
	r := newCopyReader(b)
	defer r.release()
	want := make([]byte, 3<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() {
		a.Write(want)
		a.(*net.TCPConn).CloseWrite()
	}()
	var got []byte
	b.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		p, err := r.read()
		got = append(got, p...)
		r.drained(len(p))
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("have %d bytes, want %d, equal %v", len(got), len(want), bytes.Equal(got, want))
	}
}
