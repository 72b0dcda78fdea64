package wire

import "strings"

// IsToken reports whether b is an RFC 9110 token (a method, a field name).
func IsToken[T string | []byte](b T) bool {
	for i := 0; i < len(b); i++ {
		if c := b[i]; c >= 0x80 || tokenTable[c] == 0 {
			return false
		}
	}
	return len(b) > 0
}

var tokenTable = func() (t [128]byte) {
	for c := '0'; c <= '9'; c++ {
		t[c] = 1
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = 1
		t[c-'a'+'A'] = 1
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = 1
	}
	return t
}()

func isOWS(c byte) bool { return c == ' ' || c == '\t' }

// HasToken reports whether comma-separated field values hold token, in
// any case (Connection: keep-alive, Upgrade; Expect).
func HasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// TrimOWS trims RFC 9110 optional whitespace (spaces and tabs) from both
// ends of b.
func TrimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
