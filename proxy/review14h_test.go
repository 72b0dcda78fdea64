package proxy

import (
	"io"
	"testing"
)

// An answer with a Content-Length whose body the instance holds back (a
// long poll, a file still being made) has its head passed on at once, as
// before write-through: a client's header timeout must not depend on when
// the body comes.
func TestHeadOfLengthAnswerNotHeldForBody(t *testing.T) {
	resp, release := heldAnswer(t, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", "body")
	release()
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "body" {
		t.Fatalf("body %q, %v", body, err)
	}
}
