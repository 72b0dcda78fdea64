package balance

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"testing"
)

// signedCookie is the cookie value for an instance of service "web", computed
// here from the documented construction (unpadded base64url of the first 128
// bits of HMAC-SHA256(secret, service NUL instance ID)) rather than with the
// code under test.
func signedCookie(secret []byte, id string) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("web\x00" + id))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))[:22]
}

// FuzzStickyCookie checks that a cookie-mode sticky picker honours a cookie
// value exactly when it is the one signed for one of its instances: any
// other value, however malformed, gets the inner strategy's choice and a
// new cookie, and no value panics.
func FuzzStickyCookie(f *testing.F) {
	secret := []byte("s3cret")
	f.Add(secret, "web-1", signedCookie(secret, "web-1"))
	f.Add(secret, "web-1", signedCookie(secret, "web-2"))
	f.Add(secret, "web-1", signedCookie([]byte("other"), "web-1"))
	f.Add(secret, "web-1", signedCookie(secret, "web-1")[:21]+"A")
	f.Add(secret, "web-1", signedCookie(secret, "web-1")+"=")
	f.Add(secret, "web-1", "AAAAAAAAAAAAAAAAAAAAAA")
	f.Add(secret, "web-1", "")
	f.Add([]byte{}, "web-1", signedCookie(nil, "web-1"))
	f.Add([]byte{0}, "", signedCookie([]byte{0}, ""))
	f.Add(secret, "web-1\x00x", "ünïcödé-ünïcödé-ünïcö\xff")
	f.Fuzz(func(t *testing.T, secret []byte, id, cookie string) {
		const other = "web-2"
		if id == other {
			t.Skip("instance IDs are unique")
		}
		eps := endpoints(1, 1)
		eps[0].ID, eps[1].ID = id, other
		build, err := NewBuilder("web", "round_robin", &StickyOptions{
			Mode: StickyCookie, CookieName: "sluice_web", TTL: 3600e9, Secret: secret,
		})
		if len(secret) == 0 {
			if err == nil {
				t.Fatal("NewBuilder accepted an empty secret")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := build(eps, testShared(realClock))
		res, err := p.Pick(PickInfo{Key: cookie})
		if err != nil {
			t.Fatalf("Pick(%q): %v", cookie, err)
		}
		defer res.Done(nil)
		honoured := res.SetCookie == nil
		want := ""
		for _, ep := range eps {
			if cookie == signedCookie(secret, ep.ID) {
				want = ep.ID
			}
		}
		switch {
		case honoured && cookie != signedCookie(secret, res.Endpoint.ID):
			t.Fatalf("cookie %q honoured for %q, which it was not signed for", cookie, res.Endpoint.ID)
		case !honoured && want != "":
			t.Fatalf("cookie %q, signed for %q, not honoured (picked %q)", cookie, want, res.Endpoint.ID)
		case !honoured && len(res.SetCookie) != 1:
			t.Fatalf("want one Set-Cookie with the new pick, have %q", res.SetCookie)
		}
	})
}
