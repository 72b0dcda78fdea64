package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"

	"github.com/sluice-lb/sluice/balance"
)

// answerEntry is what a Watcher uses of one element of Consul's
// /v1/health/service answer. Tags and Meta are shared by every Instance
// made from the entry and never modified.
type answerEntry struct {
	id                string // instanceID(node, serviceID)
	node, nodeAddress string
	serviceID         string
	address           string
	port              int
	tags              []string // nil when none
	meta              map[string]string
	weights           api.AgentWeights
	health            balance.Health
}

// entryFromAPI converts an element that consul/api decoded; ok is false
// for an element without a service, which a Watcher skips.
func entryFromAPI(e *api.ServiceEntry) (answerEntry, bool) {
	if e == nil || e.Service == nil {
		return answerEntry{}, false
	}
	out := answerEntry{
		serviceID: e.Service.ID,
		address:   e.Service.Address,
		port:      e.Service.Port,
		tags:      append([]string(nil), e.Service.Tags...),
		meta:      make(map[string]string, len(e.Service.Meta)),
		weights:   e.Service.Weights,
		health:    aggregateHealth(e.Checks),
	}
	for k, v := range e.Service.Meta {
		out.meta[k] = v
	}
	if e.Node != nil {
		out.node, out.nodeAddress = e.Node.Node, e.Node.Address
	}
	out.id = instanceID(out.node, out.serviceID)
	return out, true
}

// maxDepth bounds the nesting of an answer, as encoding/json does.
const maxDepth = 10000

// answerDecoder turns the bytes of successive answers of one watch into
// entries. An element whose bytes equal an element of the previous
// answer is not decoded again: its entry is reused, so an answer in which
// one check changed costs a read, a comparison of the rest and the
// decoding of one element. It is owned by the Run goroutine.
//
// Decoding reads only the fields a Watcher uses, with encoding/json's
// rules for them (field names matched exactly or ASCII case-insensitively,
// the last of repeated keys wins, null leaves a field empty, a value of
// the wrong type fails the answer); every other value is only checked to
// be well-formed JSON. A malformed answer, or one with anything but
// white space after its top-level value, fails as a whole.
type answerDecoder struct {
	// body holds the bytes of the last answer decoded; prev's raw spans
	// point into it. spare is the buffer the next answer is read into.
	body, spare []byte
	prev, cur   []cached
	// byHash indexes prev by the hash of each raw span; built only when
	// an answer is not in the previous order (nil until then, and after
	// each answer).
	byHash map[uint64]int
	seed   maphash.Seed
	// fresh counts the elements decoded in full by the last decode.
	fresh int
	// out is what decode returns, reused.
	out []answerEntry
}

// cached is one element of an answer: its bytes and what they decoded to.
type cached struct {
	raw []byte
	e   answerEntry
	ok  bool // false: null or without a service
}

func newAnswerDecoder() *answerDecoder { return &answerDecoder{seed: maphash.MakeSeed()} }

// buffer returns a buffer to read the next answer into (its length 0).
func (d *answerDecoder) buffer() []byte { return d.spare[:0] }

// decode decodes body, which the decoder owns from now on (body must come
// from buffer, grown or not), and returns the entries of the elements
// that carry a service, in answer order. The returned slice is valid
// until the next call. On an error the previous answer stays the base of
// the next comparison.
func (d *answerDecoder) decode(body []byte) ([]answerEntry, error) {
	if err := d.parse(body); err != nil {
		d.spare = body[:0] // keep the grown buffer for the next answer
		return nil, err
	}
	// The previous body is no longer referenced: it takes the next answer.
	d.spare, d.body = d.body[:0], body
	d.prev, d.cur = d.cur, d.prev
	clear(d.cur) // drop the references of entries that may have gone
	d.cur = d.cur[:0]
	clear(d.out)
	d.out = d.out[:0]
	for i := range d.prev {
		if d.prev[i].ok {
			d.out = append(d.out, d.prev[i].e)
		}
	}
	return d.out, nil
}

// parse fills cur from body, comparing with prev.
func (d *answerDecoder) parse(body []byte) error {
	s := scanner{b: body}
	d.cur = d.cur[:0]
	d.fresh = 0
	d.byHash = nil
	s.ws()
	if s.literal("null") {
		// An answer "null" is an empty set, as encoding/json decodes it.
	} else if s.off >= len(s.b) || s.b[s.off] != '[' {
		return s.fail("want an array")
	} else {
		s.off++
		k := 0 // the element of prev expected next
		for first := true; ; first = false {
			s.ws()
			if s.off < len(s.b) && s.b[s.off] == ']' && first {
				s.off++
				break
			}
			start := s.off
			if k < len(d.prev) && bytes.HasPrefix(s.b[start:], d.prev[k].raw) {
				s.off += len(d.prev[k].raw)
				d.cur = append(d.cur, cached{raw: s.b[start:s.off], e: d.prev[k].e, ok: d.prev[k].ok})
				k++
			} else {
				if err := s.skip(0); err != nil {
					return err
				}
				raw := s.b[start:s.off]
				// prev[k] changed in place when the rest follows as
				// before; else the element may have moved.
				i, moved := 0, false
				if !d.inPlace(s, k) {
					i, moved = d.lookup(raw, k)
				}
				if moved {
					d.cur = append(d.cur, cached{raw: raw, e: d.prev[i].e, ok: d.prev[i].ok})
					k = i + 1
				} else {
					e, ok, err := decodeElement(raw)
					if err != nil {
						return fmt.Errorf("consul answer, element %d: %w", len(d.cur), err)
					}
					d.fresh++
					d.cur = append(d.cur, cached{raw: raw, e: e, ok: ok})
					k++
				}
			}
			s.ws()
			if s.off >= len(s.b) {
				return s.fail("unterminated array")
			}
			c := s.b[s.off]
			s.off++
			if c == ']' {
				break
			}
			if c != ',' {
				return s.failAt(s.off-1, "want ',' or ']'")
			}
		}
	}
	s.ws()
	if s.off != len(s.b) {
		return s.fail("data after the answer")
	}
	return nil
}

// inPlace reports whether the element after the one s just passed over
// starts with the bytes of prev[k+1] (or both answers end there).
func (d *answerDecoder) inPlace(s scanner, k int) bool {
	s.ws()
	if s.off >= len(s.b) {
		return false
	}
	switch s.b[s.off] {
	case ']':
		return k+1 == len(d.prev)
	case ',':
		s.off++
		s.ws()
		return k+1 < len(d.prev) && bytes.HasPrefix(s.b[s.off:], d.prev[k+1].raw)
	}
	return false
}

// lookup finds an element of prev with the bytes of raw, which is not
// prev[k] (that was compared already). The element after prev[k] is
// tried first, then an index of every element by hash.
func (d *answerDecoder) lookup(raw []byte, k int) (int, bool) {
	if k+1 < len(d.prev) && bytes.Equal(d.prev[k+1].raw, raw) {
		return k + 1, true
	}
	if len(d.prev) == 0 {
		return 0, false
	}
	if d.byHash == nil {
		d.byHash = make(map[uint64]int, len(d.prev))
		for i := range d.prev {
			d.byHash[maphash.Bytes(d.seed, d.prev[i].raw)] = i
		}
	}
	i, ok := d.byHash[maphash.Bytes(d.seed, raw)]
	if !ok || !bytes.Equal(d.prev[i].raw, raw) {
		return 0, false
	}
	return i, true
}

// decodeElement decodes one well-formed element of the answer array.
func decodeElement(raw []byte) (e answerEntry, ok bool, err error) {
	s := scanner{b: raw}
	if s.literal("null") {
		return answerEntry{}, false, nil
	}
	e.health = balance.HealthPassing
	err = s.object("ServiceEntry", func(key []byte) error {
		switch {
		case keyIs(key, "Node"):
			return s.object("Node", func(key []byte) error {
				switch {
				case keyIs(key, "Node"):
					return s.str(&e.node)
				case keyIs(key, "Address"):
					return s.str(&e.nodeAddress)
				}
				return s.skip(2)
			})
		case keyIs(key, "Service"):
			if s.literal("null") {
				ok = false
				return nil
			}
			ok = true
			return s.object("AgentService", func(key []byte) error {
				switch {
				case keyIs(key, "ID"):
					return s.str(&e.serviceID)
				case keyIs(key, "Address"):
					return s.str(&e.address)
				case keyIs(key, "Port"):
					return s.integer(&e.port)
				case keyIs(key, "Tags"):
					return s.strList(&e.tags)
				case keyIs(key, "Meta"):
					return s.stringMap(&e.meta)
				case keyIs(key, "Weights"):
					return s.object("AgentWeights", func(key []byte) error {
						switch {
						case keyIs(key, "Passing"):
							return s.integer(&e.weights.Passing)
						case keyIs(key, "Warning"):
							return s.integer(&e.weights.Warning)
						}
						return s.skip(3)
					})
				}
				return s.skip(2)
			})
		case keyIs(key, "Checks"):
			if s.literal("null") {
				e.health = balance.HealthPassing
				return nil
			}
			if s.off < len(s.b) && s.b[s.off] != '[' && s.isValueStart() {
				return typeError("Checks", "an array")
			}
			var checks []checkState
			err := s.array(func() error {
				if s.literal("null") {
					return nil
				}
				var c checkState
				if err := s.object("HealthCheck", func(key []byte) error {
					switch {
					case keyIs(key, "CheckID"):
						return s.str(&c.id)
					case keyIs(key, "Status"):
						return s.str(&c.status)
					}
					return s.skip(3)
				}); err != nil {
					return err
				}
				checks = append(checks, c)
				return nil
			})
			// A repeated "Checks" replaces the earlier list, as in encoding/json.
			e.health = foldHealth(checks)
			return err
		}
		return s.skip(1)
	})
	if err != nil {
		return answerEntry{}, false, err
	}
	if ok {
		if len(e.tags) == 0 {
			e.tags = nil
		}
		if e.meta == nil {
			e.meta = map[string]string{}
		}
		e.id = instanceID(e.node, e.serviceID)
	}
	return e, ok, nil
}

// checkState is what a Watcher uses of a health check.
type checkState struct{ id, status string }

// foldHealth is aggregateHealth over decoded checks.
func foldHealth(checks []checkState) balance.Health {
	h := balance.HealthPassing
	for _, c := range checks {
		if c.id == api.NodeMaint || strings.HasPrefix(c.id, api.ServiceMaintPrefix) {
			return balance.HealthMaintenance
		}
		switch c.status {
		case api.HealthCritical:
			h = balance.HealthCritical
		case api.HealthWarning:
			if h == balance.HealthPassing {
				h = balance.HealthWarning
			}
		}
	}
	return h
}

// keyIs reports whether a JSON key matches a field name as encoding/json
// matches it for an ASCII name: exactly or ignoring ASCII case.
func keyIs(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := 0; i < len(key); i++ {
		a, b := key[i], name[i]
		if a == b {
			continue
		}
		if a|0x20 != b|0x20 || a|0x20 < 'a' || a|0x20 > 'z' {
			return false
		}
	}
	return true
}

// errSyntax is wrapped by the errors of malformed answers.
var errSyntax = errors.New("malformed JSON")

// scanner reads JSON from b at off. Its methods leave off after what they
// read and return errors that say where.
type scanner struct {
	b   []byte
	off int
}

func (s *scanner) failAt(off int, msg string) error {
	return fmt.Errorf("%w at byte %d: %s", errSyntax, off, msg)
}

func (s *scanner) fail(msg string) error { return s.failAt(s.off, msg) }

func typeError(what, want string) error {
	return fmt.Errorf("%s: want %s", what, want)
}

// ws skips JSON white space.
func (s *scanner) ws() {
	for s.off < len(s.b) {
		switch s.b[s.off] {
		case ' ', '\t', '\n', '\r':
			s.off++
		default:
			return
		}
	}
}

// literal consumes lit (after white space) if it is next.
func (s *scanner) literal(lit string) bool {
	s.ws()
	if end := s.off + len(lit); end <= len(s.b) && string(s.b[s.off:end]) == lit {
		s.off += len(lit)
		return true
	}
	return false
}

// skip checks and passes over one value at nesting depth.
func (s *scanner) skip(depth int) error {
	if depth > maxDepth {
		return s.fail("nested too deeply")
	}
	s.ws()
	if s.off >= len(s.b) {
		return s.fail("unexpected end")
	}
	switch c := s.b[s.off]; {
	case c == '{':
		return s.object("", func([]byte) error { return s.skip(depth + 1) })
	case c == '[':
		return s.array(func() error { return s.skip(depth + 1) })
	case c == '"':
		_, _, err := s.stringSpan()
		return err
	case c == 't':
		return s.want("true")
	case c == 'f':
		return s.want("false")
	case c == 'n':
		return s.want("null")
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := s.number()
		return err
	}
	return s.fail("want a value")
}

func (s *scanner) want(lit string) error {
	if !s.literal(lit) {
		return s.fail("bad literal")
	}
	return nil
}

// object reads an object, calling field with each key (unescaped; valid
// until field returns) with off at its value, which field must consume.
// what names the Go type: null is then an absent object and another value
// a type error; "" for skipped values, known to be objects.
func (s *scanner) object(what string, field func(key []byte) error) error {
	if what != "" && s.literal("null") {
		return nil
	}
	s.ws()
	if s.off >= len(s.b) || s.b[s.off] != '{' {
		if what != "" && s.isValueStart() {
			return typeError(what, "an object")
		}
		return s.fail("want '{'")
	}
	s.off++
	s.ws()
	if s.off < len(s.b) && s.b[s.off] == '}' {
		s.off++
		return nil
	}
	for {
		s.ws()
		key, escaped, err := s.stringSpan()
		if err != nil {
			return err
		}
		if escaped {
			key = []byte(unquote(key))
		} else {
			key = key[1 : len(key)-1]
		}
		s.ws()
		if s.off >= len(s.b) || s.b[s.off] != ':' {
			return s.fail("want ':'")
		}
		s.off++
		if err := field(key); err != nil {
			return err
		}
		if more, err := s.more('}'); !more {
			return err
		}
	}
}

// array reads an array, calling elem with off at each element, which elem
// must consume.
func (s *scanner) array(elem func() error) error {
	s.ws()
	if s.off >= len(s.b) || s.b[s.off] != '[' {
		return s.fail("want '['")
	}
	s.off++
	s.ws()
	if s.off < len(s.b) && s.b[s.off] == ']' {
		s.off++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		if more, err := s.more(']'); !more {
			return err
		}
	}
}

// more passes over what follows an element of an object (end '}') or an
// array (end ']'): true when a ',' says another element follows; false
// with a nil error at the end, or with the syntax error.
func (s *scanner) more(end byte) (bool, error) {
	s.ws()
	if s.off >= len(s.b) {
		if end == '}' {
			return false, s.fail("unterminated object")
		}
		return false, s.fail("unterminated array")
	}
	c := s.b[s.off]
	s.off++
	switch c {
	case end:
		return false, nil
	case ',':
		return true, nil
	}
	return false, s.failAt(s.off-1, "want ',' or '"+string(end)+"'")
}

// isValueStart reports whether a well-formed value of some type may start
// at off (so that a mismatch is a type error, not a syntax error).
func (s *scanner) isValueStart() bool {
	if s.off >= len(s.b) {
		return false
	}
	save := s.off
	err := s.skip(1)
	s.off = save
	return err == nil
}

// stringSpan passes over a string and returns it with its quotes, and
// whether it holds an escape or bytes that are not valid UTF-8 (either
// needs unquote).
func (s *scanner) stringSpan() (span []byte, escaped bool, err error) {
	if s.off >= len(s.b) || s.b[s.off] != '"' {
		return nil, false, s.fail("want a string")
	}
	start := s.off
	i := s.off + 1
	for {
		if i >= len(s.b) {
			return nil, false, s.failAt(i, "unterminated string")
		}
		c := s.b[i]
		switch {
		case c == '"':
			s.off = i + 1
			return s.b[start:s.off], escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(s.b) {
				return nil, false, s.failAt(i, "unterminated string")
			}
			switch s.b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(s.b) {
					return nil, false, s.failAt(i, "short \\u escape")
				}
				for _, h := range s.b[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return nil, false, s.failAt(i, "bad \\u escape")
					}
				}
				i += 6
			default:
				return nil, false, s.failAt(i, "bad escape")
			}
		case c < 0x20:
			return nil, false, s.failAt(i, "control character in string")
		case c >= utf8.RuneSelf:
			escaped = true // checked by unquote
			i++
		default:
			i++
		}
	}
}

// unquote decodes a well-formed JSON string (with its quotes) exactly as
// encoding/json does: escapes resolved, invalid UTF-8 and lone surrogates
// replaced by U+FFFD.
func unquote(span []byte) string {
	if utf8.Valid(span) && bytes.IndexByte(span, '\\') < 0 {
		return string(span[1 : len(span)-1])
	}
	var v string
	if err := json.Unmarshal(span, &v); err != nil {
		return "" // not reached: span was checked by stringSpan
	}
	return v
}

// str reads a string field; null leaves *dst as it is.
func (s *scanner) str(dst *string) error {
	s.ws()
	if s.literal("null") {
		return nil
	}
	if s.off < len(s.b) && s.b[s.off] != '"' && s.isValueStart() {
		return typeError("string field", "a string")
	}
	span, escaped, err := s.stringSpan()
	if err != nil {
		return err
	}
	if escaped {
		*dst = unquote(span)
	} else {
		*dst = string(span[1 : len(span)-1])
	}
	return nil
}

// strList reads an array of strings; null sets nil.
func (s *scanner) strList(dst *[]string) error {
	if s.literal("null") {
		*dst = nil
		return nil
	}
	if s.off < len(s.b) && s.b[s.off] != '[' && s.isValueStart() {
		return typeError("Tags", "an array of strings")
	}
	out := []string{}
	err := s.array(func() error {
		var v string
		if err := s.str(&v); err != nil {
			return err
		}
		out = append(out, v)
		return nil
	})
	*dst = out
	return err
}

// stringMap reads an object of strings; null sets nil. Keys repeat as in
// encoding/json: the last wins.
func (s *scanner) stringMap(dst *map[string]string) error {
	if s.literal("null") {
		*dst = nil
		return nil
	}
	if *dst == nil {
		*dst = map[string]string{}
	}
	m := *dst
	return s.object("Meta", func(key []byte) error {
		var v string
		if err := s.str(&v); err != nil {
			return err
		}
		m[string(key)] = v
		return nil
	})
}

// number passes over a number and returns its bytes.
func (s *scanner) number() ([]byte, error) {
	start := s.off
	i := s.off
	if i < len(s.b) && s.b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(s.b) && s.b[i] >= '0' && s.b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(s.b) && s.b[i] == '0':
		i++
	case digits() == 0:
		return nil, s.failAt(i, "bad number")
	}
	if i < len(s.b) && s.b[i] == '.' {
		i++
		if digits() == 0 {
			return nil, s.failAt(i, "bad number")
		}
	}
	if i < len(s.b) && (s.b[i] == 'e' || s.b[i] == 'E') {
		i++
		if i < len(s.b) && (s.b[i] == '+' || s.b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return nil, s.failAt(i, "bad number")
		}
	}
	s.off = i
	return s.b[start:i], nil
}

// integer reads a number into an int as encoding/json does: no fraction
// or exponent, within the range of int; null leaves *dst as it is.
func (s *scanner) integer(dst *int) error {
	if s.literal("null") {
		return nil
	}
	if s.off < len(s.b) && s.b[s.off] != '-' && (s.b[s.off] < '0' || s.b[s.off] > '9') && s.isValueStart() {
		return typeError("int field", "a number")
	}
	lit, err := s.number()
	if err != nil {
		return err
	}
	neg := lit[0] == '-'
	digits := lit
	if neg {
		digits = lit[1:]
	}
	const maxInt = int(^uint(0) >> 1)
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return fmt.Errorf("number %s: want an integer", lit)
		}
		if n > (uint64(maxInt)+1)/10 {
			return fmt.Errorf("number %s overflows int", lit)
		}
		n = n*10 + uint64(c-'0')
	}
	switch {
	case !neg && n > uint64(maxInt), neg && n > uint64(maxInt)+1:
		return fmt.Errorf("number %s overflows int", lit)
	case neg:
		*dst = int(-n)
	default:
		*dst = int(n)
	}
	return nil
}

// entries returns the entries of the answer just received: the bytes the
// Watcher read itself (see RawTransport) when it did, else what consul/api
// decoded (a HealthAPI without RawTransport, such as a test's fake). The
// result is valid until the next call.
func (w *Watcher) entries(apiEntries []*api.ServiceEntry, meta *api.QueryMeta) ([]answerEntry, *api.QueryMeta, error) {
	if !w.sink.read {
		es := make([]answerEntry, 0, len(apiEntries))
		for _, e := range apiEntries {
			if a, ok := entryFromAPI(e); ok {
				es = append(es, a)
			}
		}
		return es, meta, nil
	}
	body := w.sink.buf
	w.sink = rawSink{}
	es, err := w.dec.decode(body)
	if err != nil {
		return nil, nil, err
	}
	return es, meta, nil
}
