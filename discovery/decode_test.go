package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// answerJSON is a /v1/health/service answer as Consul sends it, with the
// fields a Watcher does not read.
func answerJSON(n int, warning map[int]bool) []byte {
	var b bytes.Buffer
	b.WriteString("[")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		status := "passing"
		if warning[i] {
			status = "warning"
		}
		fmt.Fprintf(&b, `{"Node":{"ID":"0b1e","Node":"node-%d","Address":"127.0.0.2","Datacenter":"dc1","TaggedAddresses":{"lan":"127.0.0.2"},"Meta":{"consul-network-segment":""},"CreateIndex":13,"ModifyIndex":14},`+
			`"Service":{"ID":"web-%d","Service":"web","Tags":["a","weight=%d"],"Address":"127.0.0.1","Meta":{"zone":"z\u00e9"},"Port":%d,"Weights":{"Passing":2,"Warning":1},"EnableTagOverride":false,"Proxy":{"Mode":"","MeshGateway":{},"Expose":{}},"Connect":{},"PeerName":"","CreateIndex":20,"ModifyIndex":20},`+
			`"Checks":[{"Node":"node-%d","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"","Interval":"","Timeout":"","ExposedPort":0,"Definition":{},"CreateIndex":13,"ModifyIndex":13},`+
			`{"Node":"node-%d","CheckID":"check-%d","Name":"c","Status":%q,"Notes":"","Output":"","ServiceID":"web-%d","ServiceName":"web","ServiceTags":["a"],"Type":"ttl","Interval":"","Timeout":"","ExposedPort":0,"Definition":{},"CreateIndex":21,"ModifyIndex":%d}]}`,
			i, i, 1+i%5, 1000+i, i, i, i, status, i, 30+i)
	}
	b.WriteString("]")
	return b.Bytes()
}

// viaAPI decodes body as consul/api does and converts it as a Watcher
// does for a HealthAPI without RawTransport; ok is false when
// encoding/json refuses it.
func viaAPI(body []byte) ([]answerEntry, bool) {
	var out []*api.ServiceEntry
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&out); err != nil {
		return nil, false
	}
	if rest := bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, false // sluice refuses data after the answer
	}
	es := []answerEntry{}
	for _, e := range out {
		if a, ok := entryFromAPI(e); ok {
			es = append(es, a)
		}
	}
	return es, true
}

func decodeFresh(t testing.TB, body []byte) ([]answerEntry, error) {
	t.Helper()
	d := newAnswerDecoder()
	buf := append(d.buffer(), body...)
	es, err := d.decode(buf)
	return append([]answerEntry{}, es...), err
}

func TestDecodeMatchesConsulAPI(t *testing.T) {
	for _, tc := range []struct{ name, body string }{
		{"consul answer", string(answerJSON(3, map[int]bool{1: true}))},
		{"empty", `[]`},
		{"null", ` null `},
		{"null element and service", `[null,{"Service":null},{"Node":null,"Service":{"ID":"a","Port":1}}]`},
		{"no checks", `[{"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"a","Port":80,"Tags":[],"Meta":null},"Checks":null}]`},
		{"maintenance", `[{"Service":{"ID":"a"},"Checks":[{"CheckID":"_node_maintenance","Status":"critical"},{"CheckID":"x","Status":"passing"}]}]`},
		{"critical beats warning", `[{"Service":{"ID":"a"},"Checks":[{"Status":"warning"},null,{"Status":"critical"}]}]`},
		{"case-insensitive keys", `[{"node":{"NODE":"n"},"service":{"id":"a","PORT":5,"weights":{"passing":3}}}]`},
		{"repeated keys: last wins", `[{"Service":{"ID":"a","ID":"b","Meta":{"k":"1","k":"2"}},"Checks":[{"Status":"critical"}],"Checks":[]}]`},
		{"escapes", `[{"Service":{"ID":"a\"b\\c\u00e9\ud83d\ude00\/","Tags":["t\n"],"Meta":{"k\u0041":"v"}}}]`},
		{"lone surrogate and bad UTF-8", "[{\"Service\":{\"ID\":\"\\ud800x\",\"Address\":\"\xff\xfe\"}}]"},
		{"null fields", `[{"Node":{"Node":null},"Service":{"ID":null,"Port":null,"Tags":null,"Weights":null,"Meta":{"a":null}}}]`},
		{"negative and big ints", `[{"Service":{"ID":"a","Port":-5,"Weights":{"Passing":9223372036854775807,"Warning":-9223372036854775808}}}]`},
		{"white space", " [ \n{ \"Service\" : { \"ID\" : \"a\" } } \r\n, {\"Service\":{}}\t] \n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, ok := viaAPI([]byte(tc.body))
			if !ok {
				t.Fatalf("test table: encoding/json refuses %s", tc.body)
			}
			have, err := decodeFresh(t, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(have, want) {
				t.Fatalf("\nhave %+v\nwant %+v", have, want)
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, body := range []string{
		``, `[`, `{}`, `"x"`, `[1]`, `[{}`, `[{},]`, `[,]`, `[{}]x`, `[{}] []`, `nul`,
		`[{"Service":{"ID":1}}]`, `[{"Service":{"Port":"80"}}]`, `[{"Service":{"Port":80.5}}]`,
		`[{"Service":{"Port":1e3}}]`, `[{"Service":{"Port":99999999999999999999}}]`,
		`[{"Service":{"Tags":"a"}}]`, `[{"Service":{"Tags":[1]}}]`, `[{"Service":{"Meta":[]}}]`,
		`[{"Service":{"Meta":{"a":1}}}]`, `[{"Service":"x"}]`, `[{"Checks":{}}]`, `[{"Checks":[1]}]`,
		`[{"Service":{"ID":"\x"}}]`, `[{"Service":{"ID":"\u12"}}]`, "[{\"Service\":{\"ID\":\"a\x01\"}}]",
		`[{"Service":{"X":01}}]`, `[{"Service":{"X":-}}]`, `[{"Service":{"X":1.}}]`, `[{"Service":{"X":tru}}]`,
		`[{"Service":{"X":[1,]}}]`, `[{"Service":{"X":{"a"}}}]`, `[{"Service":{"X":{1:2}}}]`,
		strings.Repeat("[", maxDepth+10) + strings.Repeat("]", maxDepth+10),
	} {
		if _, err := decodeFresh(t, []byte(body)); err == nil {
			t.Errorf("%q: decoded", body)
		}
		if es, ok := viaAPI([]byte(body)); ok && len(es) > 0 {
			// Values sluice does not read are only checked for syntax;
			// every case here is either malformed or of a wrong type in
			// a field sluice reads, which encoding/json refuses too.
			t.Errorf("%q: test table: encoding/json accepts it", body)
		}
	}
}

// An answer compared with the previous one decodes only what changed, to
// the same entries as a fresh decoder, and shares what did not change.
func TestDecodeReusesUnchangedEntries(t *testing.T) {
	d := newAnswerDecoder()
	feed := func(body []byte) []answerEntry {
		t.Helper()
		es, err := d.decode(append(d.buffer(), body...))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := decodeFresh(t, body)
		if !reflect.DeepEqual(es, want) {
			t.Fatalf("incremental decode differs from a fresh one")
		}
		return append([]answerEntry{}, es...)
	}
	first := feed(answerJSON(100, nil))
	if d.fresh != 100 {
		t.Fatalf("first answer: want 100 decoded, have %d", d.fresh)
	}
	for _, tc := range []struct {
		name  string
		body  []byte
		fresh int
	}{
		{"same", answerJSON(100, nil), 0},
		{"one flip", answerJSON(100, map[int]bool{37: true}), 1},
		{"flips at both ends", answerJSON(100, map[int]bool{0: true, 37: true, 99: true}), 2},
		{"flipped back", answerJSON(100, nil), 3},
		{"one removed", answerJSON(99, nil), 0},
		{"one added", answerJSON(100, nil), 1},
		{"reordered", reorder(answerJSON(100, nil)), 0},
		{"back in order", answerJSON(100, nil), 0},
	} {
		es := feed(tc.body)
		if d.fresh != tc.fresh {
			t.Errorf("%s: want %d decoded, have %d", tc.name, tc.fresh, d.fresh)
		}
		if tc.name == "same" {
			// Shared, not copied: the same map.
			if reflect.ValueOf(es[5].meta).UnsafePointer() != reflect.ValueOf(first[5].meta).UnsafePointer() {
				t.Errorf("unchanged entry was copied")
			}
		}
	}
	// A malformed answer changes nothing: the next compares with the last good one.
	if _, err := d.decode(append(d.buffer(), `[{"Service":`...)); err == nil {
		t.Fatal("malformed answer decoded")
	}
	feed(answerJSON(100, nil))
	if d.fresh != 0 {
		t.Errorf("after a malformed answer: want 0 decoded, have %d", d.fresh)
	}
}

// reorder swaps the halves of an answer's elements.
func reorder(body []byte) []byte {
	var raw []json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		panic(err)
	}
	raw = append(raw[len(raw)/2:], raw[:len(raw)/2]...)
	out, _ := json.Marshal(raw)
	return out
}

// An unchanged answer allocates nothing per entry.
func TestDecodeUnchangedAllocations(t *testing.T) {
	body := answerJSON(1000, nil)
	d := newAnswerDecoder()
	next := func() {
		buf := append(d.buffer(), body...)
		if _, err := d.decode(buf); err != nil {
			t.Fatal(err)
		}
	}
	next()
	next()
	if allocs := testing.AllocsPerRun(20, next); allocs > 0 {
		t.Fatalf("unchanged answer of 1000 entries: %v allocations", allocs)
	}
}

func FuzzDecodeAnswer(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input it finds, which
	// takes long on inputs of kilobytes.
	small := func(id, status string) string {
		return `{"Node":{"Node":"n","Address":"127.0.0.2","Meta":{}},"Service":{"ID":"` + id + `","Tags":["weight=2"],"Port":80,"Weights":{"Passing":2,"Warning":1}},"Checks":[{"CheckID":"c","Status":"` + status + `"}]}`
	}
	f.Add([]byte("["+small("a", "passing")+","+small("b", "passing")+"]"), []byte("["+small("a", "passing")+","+small("b", "warning")+"]"))
	f.Add([]byte("["+small("a", "passing")+"]"), []byte(`[{"Service":{"ID":"a","Meta":{"k":"v","k":"w"}}},null]`))
	f.Add([]byte(`[]`), []byte(`null`))
	f.Add([]byte(`[{"Service":{"ID":"\u00e9"}}]`), []byte("[{\"service\":{\"Id\":\"\xff\",\"PORT\":-0}}]"))
	f.Add([]byte(`[]`), []byte(`[{"Checks":[{"CheckID":"_service_maintenance:x"}],"Service":{}}]`))
	f.Fuzz(func(t *testing.T, prev, body []byte) {
		// Whatever came before, an answer decodes as it does fresh.
		d := newAnswerDecoder()
		_, _ = d.decode(append(d.buffer(), prev...))
		have, err := d.decode(append(d.buffer(), body...))
		fresh, ferr := decodeFresh(t, body)
		if (err == nil) != (ferr == nil) || (err == nil && !sameEntries(have, fresh)) {
			t.Fatalf("after %q: %v %+v; fresh: %v %+v", prev, err, have, ferr, fresh)
		}
		want, ok := viaAPI(body)
		switch {
		case err == nil && !json.Valid(bytes.TrimSpace(body)):
			t.Fatalf("decoded malformed JSON %q", body)
		case ok && err != nil:
			t.Fatalf("encoding/json decodes %q, sluice: %v", body, err)
		case ok && !sameEntries(have, want):
			t.Fatalf("%q:\nhave %+v\nwant %+v", body, have, want)
		}
	})
}

func sameEntries(a, b []answerEntry) bool {
	return len(a) == 0 && len(b) == 0 || reflect.DeepEqual(a, b)
}

// The watch of a Watcher over a real consul/api client with RawTransport
// reads its answers raw; the client's settings (token, namespace, query
// parameters) still reach Consul, and a refused token is still ErrACL.
func TestWatcherOverRawTransport(t *testing.T) {
	var (
		mu      sync.Mutex
		queries []*http.Request
		answers = make(chan []byte, 1)
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.Clone(context.Background()))
		n := len(queries)
		mu.Unlock()
		if r.URL.Query().Get("index") == "2" {
			http.Error(w, "ACL not found", http.StatusForbidden)
			return
		}
		var body []byte
		select {
		case body = <-answers:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Consul-Index", fmt.Sprint(n))
		w.Write(body)
	}))
	defer srv.Close()
	hc := &http.Client{Transport: RawTransport(http.DefaultTransport)}
	client, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String(), Token: "secret", Namespace: "ns1", HttpClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(client.Health(), Options{Service: "web", Tag: "blue", Stale: true, BackoffMin: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Update)
	go w.Run(ctx, out)
	answers <- answerJSON(3, map[int]bool{1: true})
	u := <-out
	if u.Err != nil || len(u.Instances) != 3 || u.Instances[1].Health != "warning" || u.Instances[1].Weight != 2 {
		t.Fatalf("first update: %+v", u)
	}
	if w.dec.fresh != 3 {
		t.Fatalf("the answer was not read raw (%d entries decoded by sluice)", w.dec.fresh)
	}
	// The second query (index 1... the server answers 403 at index 2).
	answers <- answerJSON(3, nil)
	u = <-out
	if u.Err != nil || u.Instances[1].Health != "passing" || w.dec.fresh != 1 {
		t.Fatalf("second update: %+v (fresh %d)", u, w.dec.fresh)
	}
	u = <-out
	if u.Err == nil || !strings.Contains(u.Err.Error(), "ACL not found") {
		t.Fatalf("want an ACL error, have %+v", u)
	}
	mu.Lock()
	defer mu.Unlock()
	q := queries[0]
	if q.Header.Get("X-Consul-Token") != "secret" || q.URL.Query().Get("ns") != "ns1" || q.URL.Query().Get("tag") != "blue" ||
		!q.URL.Query().Has("stale") || !q.URL.Query().Has("cached") {
		t.Fatalf("query lost a setting: %s %v", q.URL, q.Header)
	}
}

// Several tags (ServiceMultipleTags), node meta and a filter go through
// RawTransport too: the answer is read raw and the query keeps them all.
func TestWatcherOverRawTransportMultiTag(t *testing.T) {
	queries := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case queries <- r.Clone(context.Background()):
		default:
			<-r.Context().Done() // later queries block until the test ends
			return
		}
		w.Header().Set("X-Consul-Index", "7")
		w.Write(answerJSON(3, nil))
	}))
	defer srv.Close()
	hc := &http.Client{Transport: RawTransport(http.DefaultTransport)}
	client, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String(), HttpClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(client.Health(), Options{Service: "web", Tag: "blue", Tags: []string{"green"},
		NodeMeta: map[string]string{"rack": "r1"}, Filter: `Service.Port > 0`, BackoffMin: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Update)
	go w.Run(ctx, out)
	u := <-out
	if u.Err != nil || len(u.Instances) != 3 || u.Index != 7 {
		t.Fatalf("update: %+v", u)
	}
	if w.dec.fresh != 3 {
		t.Fatalf("the answer was not read raw (%d entries decoded by sluice)", w.dec.fresh)
	}
	q := (<-queries).URL.Query()
	if tags := q["tag"]; len(tags) != 2 || tags[0] != "blue" || tags[1] != "green" ||
		q.Get("node-meta") != "rack:r1" || q.Get("filter") != `Service.Port > 0` {
		t.Fatalf("query lost a setting: %v", q)
	}
}
