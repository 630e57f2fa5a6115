// Package admission decides which GPU jobs run now, which wait, and which
// are turned away at once.
//
// A Controller has a fixed number of slots and an optional bounded queue.
// A slot holds one job whatever its size: slots count jobs, not pixels.
// The queue serves the business tier first, then pro, then free, first
// come first served within a tier, and free jobs may hold only a share of
// it. A job's cost is its output size in megapixels: it sets the time the
// job is expected to take, which drives the queue-timeout check and the
// Retry-After of a rejection, and the accelerator memory it is expected to
// need, which the VRAM guard checks.
//
// A rejection waits for nothing: it is decided under one mutex from
// counters, so it comes back in microseconds however busy the GPU is.
package admission

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/internal/fault"
)

// Tier orders the queue. The zero value is not a tier; ParseTier maps ""
// to TierFree.
type Tier string

// The tiers, from first served to last.
const (
	TierBusiness Tier = "business"
	TierPro      Tier = "pro"
	TierFree     Tier = "free"
)

// minRetryAfter is the shortest Retry-After of a rejection.
const minRetryAfter = time.Second

// tiers is the serving order; a tier's index is its rank.
var tiers = [...]Tier{TierBusiness, TierPro, TierFree}

func (t Tier) rank() (int, bool) {
	for k, v := range tiers {
		if v == t {
			return k, true
		}
	}
	return 0, false
}

// ParseTier returns the tier named s; the empty string is TierFree.
func ParseTier(s string) (Tier, error) {
	if s == "" {
		return TierFree, nil
	}
	if _, ok := Tier(s).rank(); !ok {
		return "", fmt.Errorf("admission: tier must be free, pro or business, got %q", s)
	}
	return Tier(s), nil
}

// Request is a job asking for a slot.
type Request struct {
	// Tier orders the queue; empty means TierFree.
	Tier Tier
	// Megapixels is the job's output size in millions of pixels. It must
	// be positive.
	Megapixels float64
	// NoWait asks for a place only if one is free now: a job that would
	// queue or be refused gets ErrBusy instead, at once, and is not counted
	// as a rejection. A caller uses it to learn whether it can go ahead
	// before it decides to do anything slower.
	NoWait bool
}

// ErrBusy is Acquire's answer to a NoWait request that cannot start now.
var ErrBusy = errors.New("admission: no place free now")

// Report is what a finished job cost, given to Ticket.Release.
type Report struct {
	// Duration is the time the job ran.
	Duration time.Duration
	// PeakGPUBytes is the accelerator memory the job peaked at, as the
	// engine reports it; zero when unknown.
	PeakGPUBytes uint64
	// Megapixels is the size of the output the job produced. Zero means it
	// produced none (it failed or was cancelled): its duration says nothing
	// about the next job's and is not learned.
	Megapixels float64
}

// Stats is a snapshot of a Controller.
type Stats struct {
	InFlight int
	Queued   int
	// QueuedByTier counts the waiting jobs of each tier.
	QueuedByTier map[Tier]int
	// VRAMBlocked is true while the job at the head of the queue waits for
	// accelerator memory rather than for a slot.
	VRAMBlocked bool
	// DurationPerMegapixel is the current estimate of a megapixel's time.
	DurationPerMegapixel time.Duration
	Draining             bool
}

// Controller admits jobs. Its methods are safe for concurrent use. It
// starts no goroutine: a waiting job waits in its own caller.
type Controller struct {
	opts     Options
	freeCap  int
	m        *metrics
	pollVRAM bool

	mu          sync.Mutex
	draining    bool
	running     map[*Ticket]struct{}
	committed   uint64 // estimated memory of the jobs running
	queues      [len(tiers)]list.List
	queuedMP    [len(tiers)]float64
	vramBlocked bool
	est         estimator
}

// Ticket is an admitted job's slot. Release it exactly once when the job
// ends; later calls do nothing.
type Ticket struct {
	c        *Controller
	mp       float64
	need     uint64
	start    time.Time
	expected time.Duration
	released bool // guarded by c.mu
}

// waiter is a queued job.
type waiter struct {
	t     *Ticket
	rank  int
	elem  *list.Element
	ready chan struct{} // closed when granted or turned away
	// granted and rej are set under the Controller's mutex before ready is
	// closed.
	granted bool
	rej     *Rejection
}

// New returns a Controller.
func New(opts Options) (*Controller, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Controller{
		opts:     o,
		m:        newMetrics(o.Registerer),
		running:  make(map[*Ticket]struct{}),
		pollVRAM: o.VRAM != nil,
		est: estimator{
			perMP:    o.DurationPerMegapixel.Seconds(),
			vramBase: o.VRAMBase, vramPerMP: o.VRAMPerMegapixel,
		},
	}
	if o.QueueDepth > 0 {
		c.freeCap = max(1, int(math.Floor(o.FreeQueueShare*float64(o.QueueDepth))))
	}
	c.m.slots.Set(float64(o.Concurrency))
	return c, nil
}

// Acquire returns a slot for req, waiting in the queue if there is one and
// the expected wait is within QueueTimeout. A job turned away gets a
// *fault.Error (Overloaded, or Unavailable when draining or not ready)
// wrapping a *Rejection, with RetryAfter set. When ctx ends first, the job
// leaves the queue at once and Acquire returns an error wrapping ctx.Err().
func (c *Controller) Acquire(ctx context.Context, req Request) (*Ticket, error) {
	tier, err := ParseTier(string(req.Tier))
	if err != nil {
		return nil, fault.Wrap(err, fault.InvalidInput, "tier must be free, pro or business")
	}
	if !(req.Megapixels > 0) || math.IsInf(req.Megapixels, 0) {
		return nil, fmt.Errorf("admission: megapixels must be positive and finite, got %v", req.Megapixels)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("admission: %w", err)
	}
	if c.opts.Ready != nil {
		if err := c.opts.Ready(); err != nil {
			return nil, c.refuse(req, &Rejection{
				Reason: ReasonNotReady, RetryAfter: c.opts.UnavailableRetryAfter,
				Message: "the GPU engine is not ready; retry later", Err: err,
			})
		}
	}
	rank, _ := tier.rank()
	asked := time.Now()

	c.mu.Lock()
	if c.draining {
		c.mu.Unlock()
		return nil, c.refuse(req, c.drainingRejection())
	}
	t := &Ticket{c: c, mp: req.Megapixels, need: c.est.need(req.Megapixels), expected: c.est.duration(req.Megapixels)}
	if c.queued() == 0 && len(c.running) < c.opts.Concurrency {
		if c.fitsLocked(t.need) {
			c.startLocked(t)
			c.mu.Unlock()
			c.m.queueWait.WithLabelValues(string(tier)).Observe(time.Since(asked).Seconds())
			return t, nil
		}
		if c.opts.QueueDepth == 0 {
			rej := c.vramRejectionLocked(rank)
			c.mu.Unlock()
			return nil, c.refuse(req, rej)
		}
	}
	if req.NoWait {
		c.mu.Unlock()
		return nil, ErrBusy
	}
	if rej := c.refuseQueueLocked(tier, rank); rej != nil {
		c.mu.Unlock()
		return nil, c.reject(rej)
	}
	w := &waiter{t: t, rank: rank, ready: make(chan struct{})}
	ahead := 0
	for r := 0; r <= rank; r++ {
		ahead += c.queues[r].Len()
	}
	w.elem = c.queues[rank].PushBack(w)
	c.queuedMP[rank] += t.mp
	c.dispatchLocked()
	c.mu.Unlock()
	// Jobs of a higher tier that arrive later may still pass it.
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("vstage.admission.queued_ahead", ahead))
	return c.wait(ctx, w, asked)
}

// refuseQueueLocked returns why a job of tier cannot join the queue, or
// nil if it can.
func (c *Controller) refuseQueueLocked(tier Tier, rank int) *Rejection {
	wait := c.expectedWaitLocked(rank)
	switch {
	case c.opts.QueueDepth == 0:
		return &Rejection{Reason: ReasonQueueFull, RetryAfter: wait, Message: fmt.Sprintf(
			"all %d GPU slots are busy; retry later", c.opts.Concurrency)}
	case c.queued() >= c.opts.QueueDepth:
		return &Rejection{Reason: ReasonQueueFull, RetryAfter: wait, Message: fmt.Sprintf(
			"all %d GPU slots are busy and the queue of %d is full; retry later", c.opts.Concurrency, c.opts.QueueDepth)}
	case tier == TierFree && c.queues[rank].Len() >= c.freeCap:
		return &Rejection{Reason: ReasonQueueFull, RetryAfter: wait, Message: fmt.Sprintf(
			"all %d GPU slots are busy and the free tier's %d places in the queue are taken; retry later", c.opts.Concurrency, c.freeCap)}
	case wait > c.opts.QueueTimeout:
		return &Rejection{Reason: ReasonQueueTimeout, RetryAfter: wait, Message: fmt.Sprintf(
			"the expected wait of %v is longer than the queue timeout of %v; retry later", wait.Round(time.Second), c.opts.QueueTimeout)}
	}
	return nil
}

// wait blocks a queued job until it gets a slot, is turned away, times
// out or its ctx ends.
func (c *Controller) wait(ctx context.Context, w *waiter, asked time.Time) (*Ticket, error) {
	timeout := time.NewTimer(c.opts.QueueTimeout)
	defer timeout.Stop()
	var poll <-chan time.Time
	if c.pollVRAM {
		// Memory that another process frees announces itself nowhere.
		tk := time.NewTicker(c.opts.VRAMPollInterval)
		defer tk.Stop()
		poll = tk.C
	}
	for {
		select {
		case <-w.ready:
			return c.settle(w, asked)
		case <-ctx.Done():
			c.mu.Lock()
			if w.granted {
				c.mu.Unlock()
				w.t.Release(Report{})
				return nil, fmt.Errorf("admission: %w", ctx.Err())
			}
			if w.rej == nil {
				c.leaveLocked(w)
				c.m.abandoned.Inc()
			}
			c.mu.Unlock()
			return nil, fmt.Errorf("admission: %w", ctx.Err())
		case <-timeout.C:
			c.mu.Lock()
			if w.granted || w.rej != nil {
				c.mu.Unlock()
				return c.settle(w, asked)
			}
			reason := ReasonQueueTimeout
			if c.vramBlocked && c.headLocked() == w {
				reason = ReasonVRAM
			}
			c.leaveLocked(w)
			rej := &Rejection{Reason: reason, RetryAfter: c.expectedWaitLocked(w.rank), Message: fmt.Sprintf(
				"no GPU slot within the queue timeout of %v; retry later", c.opts.QueueTimeout)}
			if reason == ReasonVRAM {
				rej.Message = fmt.Sprintf("not enough free GPU memory for the job within the queue timeout of %v; retry later", c.opts.QueueTimeout)
			}
			c.mu.Unlock()
			return nil, c.reject(rej)
		case <-poll:
			c.mu.Lock()
			if c.vramBlocked {
				c.dispatchLocked()
			}
			c.mu.Unlock()
		}
	}
}

func (c *Controller) settle(w *waiter, asked time.Time) (*Ticket, error) {
	if w.rej != nil {
		return nil, c.reject(w.rej)
	}
	c.m.queueWait.WithLabelValues(string(tiers[w.rank])).Observe(time.Since(asked).Seconds())
	return w.t, nil
}

// Release frees the slot and learns from r. It is safe to call more than
// once; only the first call counts.
func (t *Ticket) Release(r Report) {
	c := t.c
	c.mu.Lock()
	if t.released {
		c.mu.Unlock()
		return
	}
	t.released = true
	delete(c.running, t)
	c.committed -= t.need
	learn := r.Megapixels > 0 && r.Duration > 0
	if learn {
		c.est.observeDuration(r.Megapixels, r.Duration)
	}
	var vram uint64
	if r.PeakGPUBytes > 0 {
		vram = c.est.observePeak(cmp(r.Megapixels, t.mp), r.PeakGPUBytes)
	}
	c.dispatchLocked()
	c.mu.Unlock()
	if learn {
		c.m.jobDuration.WithLabelValues(sizeLabel(r.Megapixels)).Observe(r.Duration.Seconds())
	}
	if vram > 0 {
		c.m.vramEstimate.WithLabelValues(sizeLabel(cmp(r.Megapixels, t.mp))).Set(float64(vram))
	}
}

// cmp returns a if it is positive, else b.
func cmp(a, b float64) float64 {
	if a > 0 {
		return a
	}
	return b
}

// Drain turns away every queued job and every later Acquire with
// ReasonDraining, for a shutdown; jobs holding a slot run on.
func (c *Controller) Drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = true
	for k := range c.queues {
		for e := c.queues[k].Front(); e != nil; e = c.queues[k].Front() {
			w := e.Value.(*waiter)
			c.leaveLocked(w)
			w.rej = c.drainingRejection()
			close(w.ready)
		}
	}
}

// Stats returns a snapshot of the controller.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{
		InFlight: len(c.running), Queued: c.queued(), QueuedByTier: make(map[Tier]int, len(tiers)),
		VRAMBlocked: c.vramBlocked, Draining: c.draining,
		DurationPerMegapixel: c.est.duration(1),
	}
	for k, t := range tiers {
		s.QueuedByTier[t] = c.queues[k].Len()
	}
	return s
}

func (c *Controller) queued() int {
	n := 0
	for k := range c.queues {
		n += c.queues[k].Len()
	}
	return n
}

func (c *Controller) headLocked() *waiter {
	for k := range c.queues {
		if e := c.queues[k].Front(); e != nil {
			return e.Value.(*waiter)
		}
	}
	return nil
}

// dispatchLocked gives free slots to the queue's head, in order, while
// its memory fits. A head that does not fit blocks the jobs behind it:
// letting smaller jobs pass would starve large ones.
func (c *Controller) dispatchLocked() {
	c.vramBlocked = false
	for len(c.running) < c.opts.Concurrency {
		w := c.headLocked()
		if w == nil {
			break
		}
		if !c.fitsLocked(w.t.need) {
			c.vramBlocked = true
			break
		}
		c.leaveLocked(w)
		c.startLocked(w.t)
		w.granted = true
		close(w.ready)
	}
	c.publishLocked()
}

func (c *Controller) leaveLocked(w *waiter) {
	c.queues[w.rank].Remove(w.elem)
	c.queuedMP[w.rank] -= w.t.mp
	if c.queues[w.rank].Len() == 0 {
		c.queuedMP[w.rank] = 0 // no drift from float sums
	}
	c.publishLocked()
}

func (c *Controller) startLocked(t *Ticket) {
	t.start = time.Now()
	c.running[t] = struct{}{}
	c.committed += t.need
	c.publishLocked()
}

func (c *Controller) publishLocked() {
	c.m.inFlight.Set(float64(len(c.running)))
	for k, t := range tiers {
		c.m.queueDepth.WithLabelValues(string(t)).Set(float64(c.queues[k].Len()))
	}
}

// fitsLocked reports whether a job needing need bytes fits in the memory
// the engine can use beside the jobs already running. See VRAM for the
// rule. Without a guard, or without data, every job fits: the engine's
// own out-of-memory handling stays the last line.
func (c *Controller) fitsLocked(need uint64) bool {
	if c.opts.VRAM == nil {
		return true
	}
	avail, ok := c.opts.VRAM.Available()
	if !ok {
		return true
	}
	return c.committed+need+c.opts.VRAMHeadroom <= avail
}

// expectedWaitLocked estimates how long a job of the given rank joining
// now would wait for a slot: the remaining time of the running jobs and
// the time of the queued jobs served before it, shared among the slots.
func (c *Controller) expectedWaitLocked(rank int) time.Duration {
	now := time.Now()
	var work time.Duration
	for t := range c.running {
		work += max(t.expected-now.Sub(t.start), 0)
	}
	for k := 0; k <= rank; k++ {
		work += c.est.duration(c.queuedMP[k])
	}
	return work / time.Duration(c.opts.Concurrency)
}

func (c *Controller) vramRejectionLocked(rank int) *Rejection {
	return &Rejection{Reason: ReasonVRAM, RetryAfter: c.expectedWaitLocked(rank),
		Message: "not enough free GPU memory for the job now; retry later"}
}

func (c *Controller) drainingRejection() *Rejection {
	return &Rejection{Reason: ReasonDraining, RetryAfter: c.opts.UnavailableRetryAfter,
		Message: "the service is shutting down; retry on another replica"}
}

// refuse is reject, except that a NoWait request gets ErrBusy, uncounted.
func (c *Controller) refuse(req Request, r *Rejection) error {
	if req.NoWait {
		return ErrBusy
	}
	return c.reject(r)
}

// reject counts r and returns it in the error model. A rejection always
// asks for a pause: with nothing measurable ahead (memory another process
// holds), a second still spreads the retries.
func (c *Controller) reject(r *Rejection) error {
	r.RetryAfter = max(r.RetryAfter, minRetryAfter)
	c.m.rejections.WithLabelValues(string(r.Reason)).Inc()
	return r.fault()
}
