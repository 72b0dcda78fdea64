package balance

import (
	"testing"
	"time"
)

// TestEWMAAvoidsFailingInstance: an instance that fails fast is not favoured.
func TestEWMAAvoidsFailingInstance(t *testing.T) {
	clock := newFakeClock()
	eps := clocked(clock, endpoints(1, 1))
	p := buildEWMA(eps, testShared(clock.now))
	counts := map[string]int{}
	for i := 0; i < 1000; i++ {
		res, _ := p.Pick(PickInfo{})
		counts[res.Endpoint.ID]++
		if res.Endpoint == eps[1] {
			res.Responded() // answers at once, with a 5xx
			res.Done(errBoom)
			continue
		}
		clock.advance(5 * time.Millisecond)
		res.Done(nil)
	}
	if counts["a"] < 900 {
		t.Fatalf("want the healthy instance to get >90%% of picks, have %v", counts)
	}
}

// TestEjectionKeepsWorkingAfterManyRepeats: the doubling stops at the cap
// instead of overflowing.
func TestEjectionKeepsWorkingAfterManyRepeats(t *testing.T) {
	clock := newFakeClock()
	p := runPassivePool(t, clock, PassiveOptions{ConsecutiveFailures: 1, EjectionTime: 30 * time.Second, MaxEjectionPercent: 50}, "a", "b")
	for i := 0; i < 40; i++ {
		failN(t, p, "a", 1, errBoom)
		waitFor(t, "a ejected", func() bool { return status(p, "a").Ejected })
		clock.advance(300 * time.Second) // the cap
		refresh(t, p)
		if status(p, "a").Ejected {
			t.Fatalf("ejection %d outlasted the 300 s cap", i+1)
		}
	}
}

// TestHashPickerWithStaleTried: a tried instance that left the pool does not
// make the picker give up while untried instances remain.
func TestHashPickerWithStaleTried(t *testing.T) {
	all := endpoints(1, 1, 1)
	gone, rest := all[0], all[1:]
	p := buildIPHash(rest, testShared(realClock))
	for i := 0; i < 50; i++ {
		var info PickInfo
		info.Client = clientAddr(i)
		info.Tried.Add(gone)
		info.Tried.Add(rest[0])
		res, err := p.Pick(info)
		if err != nil || res.Endpoint != rest[1] {
			t.Fatalf("client %d: want c, have %v %v", i, res.Endpoint, err)
		}
		res.Done(nil)
	}
}
