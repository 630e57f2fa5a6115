package admission

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/vstage/vstage/internal/fault"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newController(t testing.TB, o Options) (*Controller, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c, reg
}

func mustAcquire(t *testing.T, c *Controller, req Request) *Ticket {
	t.Helper()
	tk, err := c.Acquire(context.Background(), req)
	if err != nil {
		t.Fatalf("Acquire(%+v): %v", req, err)
	}
	return tk
}

// rejection returns the Rejection in err, failing the test if there is
// none or if its fault code is not want.
func rejection(t *testing.T, err error, want fault.Code) *Rejection {
	t.Helper()
	var rej *Rejection
	if !errors.As(err, &rej) {
		t.Fatalf("err = %v, want a *Rejection", err)
	}
	fe := fault.From(err)
	if fe.Code != want || !fe.Retryable || fe.RetryAfter != rej.RetryAfter {
		t.Fatalf("fault = %+v, want code %s, retryable, RetryAfter %v", fe, want, rej.RetryAfter)
	}
	return rej
}

// result is what a background Acquire returned.
type result struct {
	name string
	t    *Ticket
	err  error
}

// enqueue starts an Acquire in the background and returns once it waits
// in the queue, so that the order of calls is the order of arrival.
func enqueue(t *testing.T, ctx context.Context, c *Controller, name string, req Request, out chan<- result) {
	t.Helper()
	before := c.Stats().Queued
	go func() {
		tk, err := c.Acquire(ctx, req)
		out <- result{name, tk, err}
	}()
	waitFor(t, func() bool { return c.Stats().Queued == before+1 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func receive(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no result within 5s")
		return result{}
	}
}

func TestConcurrencyAndQueueLimits(t *testing.T) {
	c, reg := newController(t, Options{Concurrency: 2, QueueDepth: 2, QueueTimeout: time.Minute, DurationPerMegapixel: time.Second})
	a := mustAcquire(t, c, Request{Megapixels: 1})
	b := mustAcquire(t, c, Request{Tier: TierPro, Megapixels: 1})
	out := make(chan result, 2)
	enqueue(t, context.Background(), c, "q1", Request{Tier: TierPro, Megapixels: 1}, out)
	enqueue(t, context.Background(), c, "q2", Request{Tier: TierBusiness, Megapixels: 1}, out)

	_, err := c.Acquire(context.Background(), Request{Tier: TierBusiness, Megapixels: 1})
	rej := rejection(t, err, fault.Overloaded)
	if rej.Reason != ReasonQueueFull || rej.RetryAfter <= 0 {
		t.Fatalf("rejection = %+v, want queue_full with a Retry-After", rej)
	}
	if s := c.Stats(); s.InFlight != 2 || s.Queued != 2 {
		t.Fatalf("stats = %+v", s)
	}
	if got := testutil.ToFloat64(c.m.rejections.WithLabelValues("queue_full")); got != 1 {
		t.Errorf("rejections{queue_full} = %v", got)
	}
	if got := testutil.ToFloat64(c.m.inFlight); got != 2 {
		t.Errorf("jobs_in_flight = %v", got)
	}

	a.Release(Report{Duration: 10 * time.Millisecond, Megapixels: 1})
	a.Release(Report{Duration: 10 * time.Millisecond, Megapixels: 1}) // idempotent
	first := receive(t, out)
	if first.err != nil || first.name != "q2" {
		t.Fatalf("first admitted = %s %v, want q2 (business)", first.name, first.err)
	}
	if s := c.Stats(); s.InFlight != 2 || s.Queued != 1 {
		t.Fatalf("after one release: %+v", s)
	}
	b.Release(Report{})
	second := receive(t, out)
	if second.err != nil {
		t.Fatal(second.err)
	}
	first.t.Release(Report{})
	second.t.Release(Report{})
	if s := c.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("at the end: %+v", s)
	}
	lint(t, reg)
}

func TestNoQueueRejectsAtOnce(t *testing.T) {
	c, _ := newController(t, Options{})
	tk := mustAcquire(t, c, Request{Megapixels: 1})
	defer tk.Release(Report{})
	_, err := c.Acquire(context.Background(), Request{Tier: TierBusiness, Megapixels: 1})
	if rej := rejection(t, err, fault.Overloaded); rej.Reason != ReasonQueueFull {
		t.Fatalf("reason = %s", rej.Reason)
	}
}

func TestTierOrder(t *testing.T) {
	c, _ := newController(t, Options{QueueDepth: 6, FreeQueueShare: 1, QueueTimeout: time.Minute, DurationPerMegapixel: time.Millisecond})
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	out := make(chan result, 6)
	for _, n := range []struct {
		name string
		tier Tier
	}{
		{"free1", TierFree}, {"pro1", TierPro}, {"free2", ""}, {"business1", TierBusiness},
		{"pro2", TierPro}, {"business2", TierBusiness},
	} {
		enqueue(t, context.Background(), c, n.name, Request{Tier: n.tier, Megapixels: 1}, out)
	}
	var got []string
	prev := hold
	for range 6 {
		prev.Release(Report{})
		r := receive(t, out)
		if r.err != nil {
			t.Fatal(r.err)
		}
		got = append(got, r.name)
		prev = r.t
	}
	prev.Release(Report{})
	want := "business1 business2 pro1 pro2 free1 free2"
	if s := strings.Join(got, " "); s != want {
		t.Fatalf("order = %s, want %s", s, want)
	}
}

func TestFreeShareOfTheQueue(t *testing.T) {
	c, _ := newController(t, Options{QueueDepth: 4, FreeQueueShare: 0.5, QueueTimeout: time.Minute, DurationPerMegapixel: time.Millisecond})
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan result, 4)
	enqueue(t, ctx, c, "free1", Request{Megapixels: 1}, out)
	enqueue(t, ctx, c, "free2", Request{Tier: TierFree, Megapixels: 1}, out)
	_, err := c.Acquire(ctx, Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Overloaded); rej.Reason != ReasonQueueFull || !strings.Contains(rej.Message, "free tier") {
		t.Fatalf("third free job: %+v", rej)
	}
	// The paid tiers keep the rest of the queue.
	enqueue(t, ctx, c, "pro", Request{Tier: TierPro, Megapixels: 1}, out)
	enqueue(t, ctx, c, "business", Request{Tier: TierBusiness, Megapixels: 1}, out)
	cancel()
	for range 4 {
		if r := receive(t, out); !errors.Is(r.err, context.Canceled) {
			t.Fatalf("%s: %v", r.name, r.err)
		}
	}
	hold.Release(Report{})

	// A queue of one still has a place for a free job.
	c1, _ := newController(t, Options{QueueDepth: 1, FreeQueueShare: 0.1, QueueTimeout: time.Minute, DurationPerMegapixel: time.Millisecond})
	if c1.freeCap != 1 {
		t.Fatalf("free places in a queue of 1 = %d", c1.freeCap)
	}
}

func TestExpectedWaitPastTimeoutRejectsAtOnce(t *testing.T) {
	c, _ := newController(t, Options{QueueDepth: 4, QueueTimeout: time.Second, DurationPerMegapixel: 10 * time.Second})
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	defer hold.Release(Report{})
	_, err := c.Acquire(context.Background(), Request{Tier: TierBusiness, Megapixels: 1})
	rej := rejection(t, err, fault.Overloaded)
	if rej.Reason != ReasonQueueTimeout {
		t.Fatalf("reason = %s", rej.Reason)
	}
	if rej.RetryAfter < 9*time.Second || rej.RetryAfter > 10*time.Second {
		t.Errorf("RetryAfter = %v, want the running job's remaining ~10s", rej.RetryAfter)
	}
	if s := c.Stats(); s.Queued != 0 {
		t.Errorf("the rejected job was queued: %+v", s)
	}
}

func TestWaitPastTimeout(t *testing.T) {
	c, _ := newController(t, Options{QueueDepth: 1, QueueTimeout: 50 * time.Millisecond, DurationPerMegapixel: time.Millisecond})
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	defer hold.Release(Report{})
	start := time.Now()
	_, err := c.Acquire(context.Background(), Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Overloaded); rej.Reason != ReasonQueueTimeout {
		t.Fatalf("reason = %s", rej.Reason)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("waited %v, less than the 50ms timeout", d)
	}
	if s := c.Stats(); s.Queued != 0 {
		t.Errorf("the timed-out job is still queued: %+v", s)
	}
}

func TestCancelledWaiterLeavesAtOnce(t *testing.T) {
	c, _ := newController(t, Options{QueueDepth: 1, QueueTimeout: time.Minute, DurationPerMegapixel: time.Millisecond})
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan result, 2)
	enqueue(t, ctx, c, "gone", Request{Megapixels: 1}, out)
	cancel()
	r := receive(t, out)
	if !errors.Is(r.err, context.Canceled) || r.t != nil {
		t.Fatalf("cancelled waiter: %v %v", r.t, r.err)
	}
	if s := c.Stats(); s.Queued != 0 {
		t.Fatalf("still queued: %+v", s)
	}
	if got := testutil.ToFloat64(c.m.abandoned); got != 1 {
		t.Errorf("abandoned = %v", got)
	}
	// Its place is free for the next job, which gets the slot.
	enqueue(t, context.Background(), c, "next", Request{Megapixels: 1}, out)
	hold.Release(Report{})
	r = receive(t, out)
	if r.err != nil || r.name != "next" {
		t.Fatalf("next: %s %v", r.name, r.err)
	}
	r.t.Release(Report{})
}

func TestCancelledBeforeAcquire(t *testing.T) {
	c, _ := newController(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Acquire(ctx, Request{Megapixels: 1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if s := c.Stats(); s.InFlight != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestRetryAfterGrowsWithWorkAhead(t *testing.T) {
	var prev time.Duration
	for depth := 1; depth <= 4; depth++ {
		c, _ := newController(t, Options{QueueDepth: depth, FreeQueueShare: 1, QueueTimeout: time.Hour, DurationPerMegapixel: time.Second})
		hold := mustAcquire(t, c, Request{Megapixels: 1})
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan result, depth)
		for k := range depth {
			enqueue(t, ctx, c, fmt.Sprint(k), Request{Megapixels: 2}, out)
		}
		_, err := c.Acquire(context.Background(), Request{Megapixels: 1})
		rej := rejection(t, err, fault.Overloaded)
		if rej.RetryAfter <= prev {
			t.Errorf("depth %d: RetryAfter %v, not above %v", depth, rej.RetryAfter, prev)
		}
		// One running second plus two seconds per queued job.
		if want := time.Duration(1+2*depth) * time.Second; rej.RetryAfter > want || rej.RetryAfter < want-time.Second {
			t.Errorf("depth %d: RetryAfter %v, want about %v", depth, rej.RetryAfter, want)
		}
		prev = rej.RetryAfter
		cancel()
		for range depth {
			receive(t, out)
		}
		hold.Release(Report{})
	}
}

func TestRetryAfterLearnsFromDurations(t *testing.T) {
	c, _ := newController(t, Options{DurationPerMegapixel: time.Second})
	tk := mustAcquire(t, c, Request{Megapixels: 2})
	tk.Release(Report{Duration: 40 * time.Second, Megapixels: 2}) // 20s per megapixel replaces the seed
	if got := c.Stats().DurationPerMegapixel; got != 20*time.Second {
		t.Fatalf("per megapixel = %v", got)
	}
	tk = mustAcquire(t, c, Request{Megapixels: 1})
	tk.Release(Report{Duration: 10 * time.Second}) // failed: not learned
	if got := c.Stats().DurationPerMegapixel; got != 20*time.Second {
		t.Fatalf("a failed job was learned: %v", got)
	}
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	defer hold.Release(Report{})
	_, err := c.Acquire(context.Background(), Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Overloaded); rej.RetryAfter < 19*time.Second {
		t.Fatalf("RetryAfter = %v, want about 20s", rej.RetryAfter)
	}
	if n := testutil.CollectAndCount(c.m.jobDuration); n != 1 {
		t.Errorf("job duration series = %d", n)
	}
}

func TestDrainAndNotReady(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	c, _ := newController(t, Options{QueueDepth: 2, QueueTimeout: time.Minute, DurationPerMegapixel: time.Millisecond,
		Ready: func() error {
			if ready.Load() {
				return nil
			}
			return errors.New("engine restarting")
		}})
	hold := mustAcquire(t, c, Request{Megapixels: 1})
	ready.Store(false)
	_, err := c.Acquire(context.Background(), Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Unavailable); rej.Reason != ReasonNotReady || rej.RetryAfter != 5*time.Second {
		t.Fatalf("not ready: %+v", rej)
	}
	if !strings.Contains(err.Error(), "engine restarting") {
		t.Errorf("the cause is lost: %v", err)
	}
	ready.Store(true)
	out := make(chan result, 1)
	enqueue(t, context.Background(), c, "queued", Request{Megapixels: 1}, out)
	c.Drain()
	r := receive(t, out)
	if rej := rejection(t, r.err, fault.Unavailable); rej.Reason != ReasonDraining {
		t.Fatalf("queued job on drain: %+v", rej)
	}
	_, err = c.Acquire(context.Background(), Request{Megapixels: 1})
	if rej := rejection(t, err, fault.Unavailable); rej.Reason != ReasonDraining {
		t.Fatalf("after drain: %+v", rej)
	}
	hold.Release(Report{})
	if s := c.Stats(); s.InFlight != 0 || s.Queued != 0 || !s.Draining {
		t.Fatalf("stats = %+v", s)
	}
}

func TestBadInput(t *testing.T) {
	c, _ := newController(t, Options{})
	for _, req := range []Request{{Megapixels: 0}, {Megapixels: -1}, {Tier: "gold", Megapixels: 1}} {
		if _, err := c.Acquire(context.Background(), req); err == nil {
			t.Errorf("Acquire(%+v) succeeded", req)
		}
	}
	if _, err := c.Acquire(context.Background(), Request{Tier: "gold", Megapixels: 1}); fault.CodeOf(err) != fault.InvalidInput {
		t.Errorf("unknown tier: %v", err)
	}
	for _, o := range []Options{{Concurrency: -1}, {QueueDepth: -1}, {FreeQueueShare: 1.5}, {QueueTimeout: -time.Second}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	if tier, err := ParseTier(""); err != nil || tier != TierFree {
		t.Errorf("ParseTier(\"\") = %q, %v", tier, err)
	}
}

// TestStress races many jobs, some cancelled, against two slots: never
// more than two run, and every job ends admitted, rejected or cancelled.
func TestStress(t *testing.T) {
	c, _ := newController(t, Options{Concurrency: 2, QueueDepth: 4, QueueTimeout: 200 * time.Millisecond, DurationPerMegapixel: time.Millisecond})
	var running, peak atomic.Int32
	var wg sync.WaitGroup
	for k := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(k%7)*5*time.Millisecond+time.Millisecond)
			defer cancel()
			tk, err := c.Acquire(ctx, Request{Tier: tiers[k%3], Megapixels: 1})
			if err != nil {
				return
			}
			n := running.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(time.Millisecond)
			running.Add(-1)
			tk.Release(Report{Duration: time.Millisecond, Megapixels: 1})
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Fatalf("%d jobs ran at once", p)
	}
	if s := c.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func lint(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := promlint.NewWithMetricFamilies(gather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestNoWait asks for a place without waiting: granted while one is free,
// ErrBusy at once (and uncounted) when the job would queue, be refused or
// the engine is not ready.
func TestNoWait(t *testing.T) {
	reg := prometheus.NewRegistry()
	var notReady atomic.Bool
	c, err := New(Options{
		Concurrency: 1, QueueDepth: 4, QueueTimeout: time.Minute, Registerer: reg,
		Ready: func() error {
			if notReady.Load() {
				return errors.New("engine starting")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	t1, err := c.Acquire(ctx, Request{Megapixels: 1, NoWait: true})
	if err != nil {
		t.Fatalf("a free place: %v", err)
	}
	if _, err := c.Acquire(ctx, Request{Megapixels: 1, NoWait: true}); !errors.Is(err, ErrBusy) {
		t.Fatalf("with the place taken: %v, want ErrBusy", err)
	}
	if s := c.Stats(); s.Queued != 0 {
		t.Errorf("a NoWait request queued: %+v", s)
	}
	t1.Release(Report{})
	notReady.Store(true)
	if _, err := c.Acquire(ctx, Request{Megapixels: 1, NoWait: true}); !errors.Is(err, ErrBusy) {
		t.Fatalf("not ready: %v, want ErrBusy", err)
	}
	if n := rejectionsTotal(t, reg); n != 0 {
		t.Errorf("NoWait refusals were counted as %v rejections", n)
	}
	// The same request without NoWait is refused and counted.
	if _, err := c.Acquire(ctx, Request{Megapixels: 1}); fault.CodeOf(err) != fault.Unavailable {
		t.Errorf("not ready without NoWait: %v, want unavailable", err)
	}
}

func rejectionsTotal(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "vstage_admission_rejections_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
