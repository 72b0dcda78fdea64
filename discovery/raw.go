package discovery

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MaxAnswerBytes bounds the body of any one answer from Consul through
// RawTransport (a watch answer a Watcher reads itself, and every other
// answer: catalog, Connect, agent); a longer answer fails its request,
// whose caller keeps what it had.
const MaxAnswerBytes = 256 << 20

// RawTransport wraps the transport of the HTTP client under the Consul
// API client whose Health a Watcher is given, so that the Watcher reads
// the bytes of its watch answers itself instead of through consul/api's
// full decoding: for a request made by a Watcher's watch query (its
// context carries the Watcher's buffer), the body of a 200 answer is read
// into that buffer and consul/api is handed an empty array; the request
// itself, every header and every other answer pass unchanged, so the
// client's settings (address, scheme, TLS, token, namespace, partition,
// query options) all apply. Requests of anyone else pass through as they
// are, their bodies bounded by MaxAnswerBytes. It may be shared by any
// number of clients and goroutines.
func RawTransport(next http.RoundTripper) http.RoundTripper { return rawTransport{next: next} }

type rawTransport struct{ next http.RoundTripper }

// rawSink receives the body of one watch answer; it belongs to the
// goroutine that made the request (RoundTrip runs on it).
type rawSink struct {
	buf  []byte // in: where to read; out: the body
	read bool   // buf holds the body of a 200 answer
}

type rawSinkKey struct{}

// withSink returns ctx carrying sink for RawTransport.
func withSink(ctx context.Context, sink *rawSink) context.Context {
	return context.WithValue(ctx, rawSinkKey{}, sink)
}

// emptyArray is what consul/api decodes in place of a body read raw.
const emptyArray = "[]"

func (t rawTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	sink, _ := r.Context().Value(rawSinkKey{}).(*rawSink)
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	if sink == nil || resp.StatusCode != http.StatusOK {
		if resp.Body != nil {
			resp.Body = &cappedBody{ReadCloser: resp.Body, left: MaxAnswerBytes}
		}
		return resp, nil
	}
	buf, err := readBody(resp.Body, sink.buf, resp.ContentLength)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	sink.buf, sink.read = buf, true
	resp.Body = io.NopCloser(strings.NewReader(emptyArray))
	resp.ContentLength = int64(len(emptyArray))
	resp.Uncompressed = true
	return resp, nil
}

// readBody appends body to buf[:0], growing it as needed, up to
// MaxAnswerBytes; size is the announced length (-1 when unknown).
func readBody(body io.Reader, buf []byte, size int64) ([]byte, error) {
	buf = buf[:0]
	if size > MaxAnswerBytes {
		return nil, fmt.Errorf("consul answer of %d bytes: more than %d", size, MaxAnswerBytes)
	}
	if size > 0 && int64(cap(buf)) < size+1 {
		buf = make([]byte, 0, size+1) // +1: the read that sees EOF
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > MaxAnswerBytes {
			return nil, errAnswerTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// errAnswerTooLarge is an answer from Consul longer than MaxAnswerBytes.
var errAnswerTooLarge = fmt.Errorf("consul answer longer than %d bytes", MaxAnswerBytes)

// cappedBody fails a body's read past MaxAnswerBytes (left: what may still
// be read; negative once failed).
type cappedBody struct {
	io.ReadCloser
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, errAnswerTooLarge
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1] // one byte more than allowed shows the excess
	}
	n, err := b.ReadCloser.Read(p)
	if int64(n) > b.left {
		n, b.left = int(b.left), -1
		return n, errAnswerTooLarge
	}
	b.left -= int64(n)
	return n, err
}
