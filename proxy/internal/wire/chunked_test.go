package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func decode(t testing.TB, in string, keep bool) (string, http.Header, int, error) {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(in))
	var r ChunkedReader
	var trailer http.Header
	tp := &trailer
	if !keep {
		tp = nil
	}
	r.Reset(br, nil, tp)
	data, err := io.ReadAll(&r)
	return string(data), trailer, br.Buffered(), err
}

func TestChunkedDecodes(t *testing.T) {
	for _, c := range []struct {
		in, data string
		trailer  http.Header
		left     int // bytes after the body
	}{
		{"0\r\n\r\n", "", nil, 0},
		{"5\r\nhello\r\n0\r\n\r\n", "hello", nil, 0},
		{"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", "hello world", nil, 4},
		{"A;name=value\r\n0123456789\r\n0 ; x\r\n\r\n", "0123456789", nil, 0},
		{"00000005\r\nhello\r\n000\r\n\r\n", "hello", nil, 0},
		{"2\r\nok\r\n0\r\nX-Sum: 1 \r\nx-sum:\t2\r\nOther:v\r\n\r\n", "ok",
			http.Header{"X-Sum": {"1", "2"}, "Other": {"v"}}, 0},
	} {
		data, trailer, left, err := decode(t, c.in, true)
		if err != nil || data != c.data || left != c.left || !reflect.DeepEqual(trailer, c.trailer) {
			t.Errorf("%q: got %q, trailer %v, %d left, %v; want %q, %v, %d", c.in, data, trailer, left, err, c.data, c.trailer, c.left)
		}
		if _, trailer, _, _ := decode(t, c.in, false); trailer != nil {
			t.Errorf("%q: trailers kept when not asked for", c.in)
		}
	}
}

func TestChunkedRefuses(t *testing.T) {
	for _, c := range []struct{ in, reason string }{
		{"zz\r\n", "malformed chunk size"},
		{"\r\n", "malformed chunk size"},
		{"1000000000000000\r\n", "malformed chunk size"},
		{"-1\r\n", "malformed chunk size"},
		{"5x\r\nhello\r\n0\r\n\r\n", "malformed chunk size"},
		{"5 x\r\nhello\r\n0\r\n\r\n", "malformed chunk extension"},
		// What follows the size's whitespace is checked however far it is.
		{"5" + strings.Repeat(" ", 40) + "x\r\nhello\r\n0\r\n\r\n", "malformed chunk extension"},
		{"000000000000000" + strings.Repeat("\t", 17) + "0\r\n\r\n", "malformed chunk extension"},
		{"5\nhello\r\n0\r\n\r\n", "chunk line not terminated by CRLF"},
		{"5\r\r\nhello\r\n0\r\n\r\n", "bare CR in chunk line"},
		{"5\x00\r\nhello\r\n0\r\n\r\n", "control character in chunk line"},
		{"5\r\nhello world\r\n0\r\n\r\n", "chunk data longer than its size, or not followed by CRLF"},
		{"5\r\nhello\n0\r\n\r\n", "chunk data longer than its size, or not followed by CRLF"},
		{"0\r\n folded: x\r\n\r\n", "obsolete line folding in trailer"},
		{"0\r\nno colon\r\n\r\n", "malformed trailer field"},
		{"0\r\nbad name: x\r\n\r\n", "malformed trailer field"},
		{"0\r\n: x\r\n\r\n", "malformed trailer field"},
		{"1;" + strings.Repeat("x", MaxChunkMeta) + "\r\na\r\n0\r\n\r\n", ErrChunkMetaTooLarge.Reason},
		{"0\r\nX: " + strings.Repeat("x", MaxChunkMeta) + "\r\n\r\n", ErrChunkMetaTooLarge.Reason},
	} {
		_, _, _, err := decode(t, c.in, true)
		var we *Error
		if !errors.As(err, &we) || we.Reason != c.reason {
			t.Errorf("%.40q: %v, want %q", c.in, err, c.reason)
		}
	}
	// Cut short: the connection's end is never the body's.
	for _, in := range []string{"", "5\r\nhel", "5\r\nhello", "5\r\nhello\r\n", "5\r\nhello\r\n0\r\n", "0\r\nX: y\r\n"} {
		if _, _, _, err := decode(t, in, true); err != io.ErrUnexpectedEOF {
			t.Errorf("%q: %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
	// Many chunk sizes are not metadata: a long body of 1-byte chunks reads.
	many := strings.Repeat("1\r\nx\r\n", 100000) + "0\r\n\r\n"
	if data, _, _, err := decode(t, many, false); err != nil || len(data) != 100000 {
		t.Errorf("100,000 one-byte chunks: %d bytes, %v", len(data), err)
	}
}

// A Read that has to wait reads the connection once and hands on what came:
// part of a chunk is not held back until the chunk ends or the caller's
// buffer is full.
func TestChunkedHandsOnBytesAsTheyArrive(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	var r ChunkedReader
	r.Reset(bufio.NewReader(client), nil, nil)
	go io.WriteString(server, "10000\r\n"+strings.Repeat("a", 1000))
	buf := make([]byte, 32<<10)
	got := 0
	for got < 1000 {
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := r.Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes of the chunk's first 1,000: %v", got, err)
		}
		got += n
	}
	if got != 1000 {
		t.Fatalf("read %d bytes, 1,000 were sent", got)
	}
}

type countWaits int

func (c *countWaits) Wait() { *c++ }

// The Waiter is told before every read that may wait, and only then.
func TestChunkedWaiter(t *testing.T) {
	var w countWaits
	var r ChunkedReader
	// Each piece arrives in its own read of the connection.
	r.Reset(bufio.NewReader(&onePiece{pieces: []string{"5\r\nhe", "llo\r\n", "0\r\n\r\n"}}), &w, nil)
	data, err := io.ReadAll(&r)
	if err != nil || string(data) != "hello" {
		t.Fatalf("%q, %v", data, err)
	}
	if w != 3 {
		t.Errorf("%d waits for 3 pieces", w)
	}
}

type onePiece struct{ pieces []string }

func (o *onePiece) Read(p []byte) (int, error) {
	if len(o.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(p, o.pieces[0])
	o.pieces[0] = o.pieces[0][n:]
	if o.pieces[0] == "" {
		o.pieces = o.pieces[1:]
	}
	return n, nil
}

// FuzzChunked: sluice's decoder is at least as strict as net/http's but for
// whitespace before a chunk extension, which RFC 9112 allows and net/http
// refuses. What it accepts, net/http reads the same way (data and
// trailers), and it stops exactly at the body's end.
func FuzzChunked(f *testing.F) {
	for _, s := range []string{
		"0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", "A;x=y\r\n0123456789\r\n0\r\nT: v\r\n\r\nrest",
		"5\nhello\r\n0\r\n\r\n", "5\r\nhello world\r\n0\r\n\r\n", "0\r\n folded\r\n\r\n", "zz\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		data, trailer, left, err := decode(t, string(in), true)
		if err != nil {
			return
		}
		if bytes.Contains(in, []byte(" ;")) || bytes.Contains(in, []byte("\t;")) {
			return // BWS before a chunk extension (RFC 9112 §7.1.1): net/http refuses it
		}
		head := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
		br := bufio.NewReader(io.MultiReader(strings.NewReader(head), bytes.NewReader(in)))
		resp, gerr := http.ReadResponse(br, nil)
		if gerr != nil {
			t.Fatalf("net/http refuses the head: %v", gerr)
		}
		gdata, gerr := io.ReadAll(resp.Body)
		if gerr != nil {
			t.Fatalf("accepted %q, net/http refuses it: %v", in, gerr)
		}
		if string(gdata) != data {
			t.Fatalf("%q: data %q, net/http %q", in, data, gdata)
		}
		if len(trailer) > 0 && !reflect.DeepEqual(trailer, resp.Trailer) {
			t.Fatalf("%q: trailer %v, net/http %v", in, trailer, resp.Trailer)
		}
		if left != br.Buffered() {
			t.Fatalf("%q: %d bytes left after the body, net/http %d", in, left, br.Buffered())
		}
	})
}

// Chunks whose size lines are already buffered are read by one Read, as
// net/http's reader does: a Read per chunk costs the caller a write per
// chunk (sluice flushes each to its client). Nothing more is waited for.
func TestChunkedCoalescesBufferedChunks(t *testing.T) {
	var w countWaits
	var r ChunkedReader
	r.Reset(bufio.NewReader(&onePiece{pieces: []string{strings.Repeat("1\r\nx\r\n", 100) + "3\r\nab", "c\r\n0\r\n\r\n"}}), &w, nil)
	buf := make([]byte, 4096)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != strings.Repeat("x", 100)+"ab" {
		t.Fatalf("first Read: %q, %v; want the 100 buffered chunks and the start of the next", buf[:n], err)
	}
	if w != 1 {
		t.Fatalf("%d waits for the first piece", w)
	}
	data, err := io.ReadAll(&r)
	if err != nil || string(data) != "c" {
		t.Fatalf("rest: %q, %v", data, err)
	}
	// The last chunk's trailer section may have to be waited for: a Read
	// that holds data does not go on to it.
	w = 0
	r.Reset(bufio.NewReader(&onePiece{pieces: []string{"1\r\nx\r\n0\r\n", "T: v\r\n\r\n"}}), &w, nil)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "x" || w != 1 {
		t.Fatalf("data before a trailer section not yet here: %q, %v, %d waits", buf[:n], err, w)
	}
	if data, err := io.ReadAll(&r); err != nil || len(data) != 0 {
		t.Fatalf("rest: %q, %v", data, err)
	}
	// A malformed size line after buffered data fails the body.
	r.Reset(bufio.NewReader(strings.NewReader("1\r\nx\r\nzz\r\n")), nil, nil)
	if _, err := io.ReadAll(&r); err == nil {
		t.Fatal("malformed second chunk accepted")
	}
}
