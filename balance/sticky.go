package balance

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"time"
)

// StickyMode says where a sticky service finds a request's affinity key.
type StickyMode string

// The values of StickyMode, as the configuration names them.
const (
	StickyCookie   StickyMode = "cookie"    // a signed cookie that sluice sets
	StickySourceIP StickyMode = "source_ip" // the client's address
	StickyHeader   StickyMode = "header"    // a request header's value
)

// StickyModes lists every StickyMode, in documentation order. The caller
// owns the returned slice.
func StickyModes() []StickyMode {
	return []StickyMode{StickyCookie, StickySourceIP, StickyHeader}
}

// ParseStickyMode returns the StickyMode named s, exactly as StickyModes
// spells it.
func ParseStickyMode(s string) (StickyMode, error) {
	for _, m := range StickyModes() {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown sticky mode %q", s)
}

// StickyOptions configure session affinity, a decorator over any strategy.
type StickyOptions struct {
	Mode StickyMode
	// Cookie mode: the cookie's name, lifetime and HMAC key. Processes
	// that share Secret honour each other's cookies.
	CookieName string
	TTL        time.Duration
	Secret     []byte
}

// cookieLen is the length of a cookie value: 128 bits of HMAC-SHA256 in
// unpadded base64url.
const cookieLen = 22

// stickyBuilder wraps a Builder. It caches each instance's cookie value,
// which only depends on the service, the instance ID and the secret; the
// cache is used only on the pool owner goroutine that calls Build. An
// entry not built for a whole publication (Shared.builds) is dropped: a
// publication of several tiers builds each tier's endpoints in turn.
type stickyBuilder struct {
	inner   Builder
	opts    StickyOptions
	service string
	cookies map[string]stickyCookie // by instance ID
	round   uint64                  // the Shared.builds of the last build
}

type stickyCookie struct {
	value     string
	setCookie []string
	round     uint64 // the Shared.builds when it was last built
}

func (b *stickyBuilder) build(eps []*Endpoint, shared *Shared) Picker {
	inner := b.inner(eps, shared)
	if len(eps) == 0 {
		return inner
	}
	p := &sticky{inner: inner, mode: b.opts.Mode, eps: eps}
	switch b.opts.Mode {
	case StickySourceIP, StickyHeader:
		p.mg = newMaglev(eps)
	case StickyCookie:
		round := shared.builds
		if round != b.round {
			// A new publication: drop what the last one did not build.
			for id, c := range b.cookies {
				if c.round != b.round {
					delete(b.cookies, id)
				}
			}
			b.round = round
		}
		p.byValue = make(map[string]*Endpoint, len(eps))
		p.setCookie = make(map[*Stats][]string, len(eps))
		for _, ep := range eps {
			c, ok := b.cookies[ep.ID]
			if !ok {
				c = b.newCookie(ep.ID)
			}
			c.round = round
			b.cookies[ep.ID] = c
			p.byValue[c.value] = ep
			p.setCookie[ep.Stats] = c.setCookie
		}
	}
	return p
}

// newCookie signs an instance ID: the value reveals neither ID nor address.
func (b *stickyBuilder) newCookie(id string) stickyCookie {
	mac := hmac.New(sha256.New, b.opts.Secret)
	mac.Write([]byte(b.service))
	mac.Write([]byte{0})
	mac.Write([]byte(id))
	value := base64.RawURLEncoding.EncodeToString(mac.Sum(nil))[:cookieLen]
	header := fmt.Sprintf("%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax",
		b.opts.CookieName, value, int64(b.opts.TTL/time.Second))
	return stickyCookie{value: value, setCookie: []string{header}}
}

// sticky honours the affinity key while its instance is eligible and not
// yet tried by the request; otherwise the inner strategy chooses.
//   - cookie: the key is the cookie value; a missing, unknown or forged
//     value, or one of an instance that left, gets the inner choice and a
//     new cookie.
//   - source_ip / header: the client address / header value is hashed onto
//     the eligible instances (Maglev); a missing header uses the inner
//     strategy.
type sticky struct {
	inner     Picker
	mode      StickyMode
	eps       []*Endpoint
	mg        *maglev
	byValue   map[string]*Endpoint
	setCookie map[*Stats][]string
}

var _ Picker = (*sticky)(nil)

func (p *sticky) Pick(info PickInfo) (PickResult, error) {
	switch p.mode {
	case StickySourceIP:
		if info.Client.IsValid() {
			return p.mg.lookup(hashAddr(info.Client), &info.Tried)
		}
	case StickyHeader:
		if info.Key != "" {
			return p.mg.lookup(hashString(info.Key), &info.Tried)
		}
	case StickyCookie:
		if len(info.Key) == cookieLen {
			if ep := p.byValue[info.Key]; ep != nil && (info.Tried.Len() == 0 || !info.Tried.Has(ep)) {
				return picked(ep)
			}
		}
		res, err := p.inner.Pick(info)
		if err == nil {
			res.SetCookie = p.setCookie[res.Endpoint.Stats]
		}
		return res, err
	}
	return p.inner.Pick(info)
}
