package proxy

// Review tests (h-review): each fails on the code it was written against
// and shows the finding described above it. Raw sockets, loopback only.

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestReviewIdleUpstreamConnNeverClosed shows: README (Timeouts and
// limits) promises idle upstream connections are "each closed after 90 s
// idle", but Upstream checks idleAt only in get, i.e. when another request
// goes to the same address. An idle connection to an instance that gets no
// further request (it left Consul, was ejected, or its service is quiet)
// stays open for the life of the process; hostPool entries in u.hosts are
// never removed either. With Consul churn (new addresses on every deploy)
// descriptors accumulate, up to 256 per departed address, many in
// CLOSE_WAIT once the instance closes its side. Expected: the connection is
// closed within a small multiple of idleTimeout without another request.
func TestReviewIdleUpstreamConnNeverClosed(t *testing.T) {
	closed := make(chan struct{})
	addr := serveOneConn(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// The instance keeps its side open: only sluice may close it.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); err == io.EOF {
			close(closed)
		}
	})
	u := NewUpstream()
	u.idleTimeout = 100 * time.Millisecond
	defer u.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	resp, err := u.Try(req, req.URL.Host, TryLimits{})
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	select {
	case <-closed:
	case <-time.After(2 * time.Second): // 20x the idle timeout
		t.Errorf("an idle upstream connection was still open 2 s after its 100 ms idle timeout")
	}
}
