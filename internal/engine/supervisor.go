// Package engine runs the Python engine process, keeps it healthy and talks
// to it over gRPC on a Unix socket.
//
// A Supervisor spawns "python -m inference", waits until the engine is live
// (its health service answers) and ready (SERVING), and restarts it when it
// exits, stops answering health checks, reports CUDA out-of-memory, wedges
// on a job, grows past a memory limit or has run a set number of jobs.
// Restarts back off exponentially with jitter. Stage sends one job; a job in
// flight when the engine dies ends at once with ErrUnavailable.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shirou/gopsutil/v4/process"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vstage/vstage/client/backoff"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// ErrUnavailable is wrapped by the errors of Ready and Stage when the engine
// is starting, restarting, stopped, or died during the job. Retrying later
// may succeed.
var ErrUnavailable = errors.New("engine unavailable")

// startPoll is the period of health checks while the engine starts.
const startPoll = 100 * time.Millisecond

// Supervisor owns one engine process at a time. Create it with New, run it
// with Run, and send jobs with Stage. Its methods are safe for concurrent
// use.
type Supervisor struct {
	opts Options
	log  *slog.Logger
	m    *metrics
	wg   sync.WaitGroup

	running atomic.Bool
	// slots holds a token per job in flight when Options.Slots is set.
	slots chan struct{}
	// codec encodes the calls of every instance; its buffers outlive one.
	codec codec

	// Test hooks.
	oomKills  func() (uint64, bool)
	onSpawn   func(pid int)
	onBackoff func(time.Duration)

	mu       sync.Mutex
	cur      *instance
	info     *enginev1.InfoResponse
	state    string // why there is no ready instance, for Ready
	restarts int
	failures int
	last     restartRequest
	closed   bool // Run is returning: no more goroutines
}

// Status is a snapshot of the supervisor for logs, tests and debugging.
type Status struct {
	// PID is the engine's process id, 0 when none runs.
	PID   int
	Ready bool
	// Restarts counts restarts since New; ConsecutiveFailures those since
	// the engine last stayed up for BackoffMax.
	Restarts            int
	ConsecutiveFailures int
	// LastReason and LastDetail describe the latest restart.
	LastReason string
	LastDetail string
	// InFlight counts jobs the engine has not said have ended.
	InFlight int
}

// New returns a Supervisor; nothing runs until Run.
func New(opts Options) (*Supervisor, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Supervisor{
		codec:    codec{pool: &dirtyPool{}},
		opts:     o,
		log:      o.Logger,
		m:        newMetrics(o.Registerer),
		oomKills: oomKills,
		state:    "engine not started",
	}
	if o.Slots > 0 {
		s.slots = make(chan struct{}, o.Slots)
	}
	return s, nil
}

// Run starts the engine and keeps it running until ctx is done, then stops
// it (SIGTERM, SIGKILL after StopGrace) and returns once the process is
// reaped and every goroutine of the supervisor has ended. It returns nil
// after ctx is done; a Supervisor runs once.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("engine: Run called twice")
	}
	// Every instance is stopped by the time this runs; closed keeps a job
	// ending late from adding to the group being waited for.
	defer func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.wg.Wait()
	}()
	for {
		i, req := s.start(ctx)
		if i != nil {
			up := time.Now()
			req = s.watch(ctx, i)
			graceful := ctx.Err() != nil || s.drained(i, req)
			s.stop(i, graceful)
			if time.Since(up) >= s.opts.BackoffMax {
				s.mu.Lock()
				s.failures = 0
				s.mu.Unlock()
			}
		}
		if ctx.Err() != nil {
			s.setState("engine stopped")
			return nil
		}
		d := s.recordRestart(req)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			s.setState("engine stopped")
			return nil
		case <-t.C:
		}
	}
}

// start spawns an engine and waits until it is SERVING. It returns the
// instance, or nil and why it failed; nil and an empty reason when ctx
// ended first.
func (s *Supervisor) start(ctx context.Context) (*instance, restartRequest) {
	t0 := time.Now()
	s.mu.Lock()
	s.state = "engine starting"
	if s.failures > 0 {
		// A crash loop keeps saying why, not just "starting".
		s.state = fmt.Sprintf("engine starting, attempt %d after %s (%s)", s.failures+1, s.last.reason, s.last.detail)
	}
	s.mu.Unlock()
	i, err := s.spawn()
	if err != nil {
		s.log.Error("engine start failed", "error", err)
		return nil, restartRequest{ReasonStartFailed, err.Error()}
	}
	s.mu.Lock()
	s.cur = i
	s.mu.Unlock()
	s.log.Info("engine started", "engine_pid", i.pid, "socket", i.socket)
	deadline := time.NewTimer(s.opts.StartTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(startPoll)
	defer poll.Stop()
	live := false
	for {
		select {
		case <-ctx.Done():
			s.stop(i, true)
			return nil, restartRequest{}
		case <-i.exited:
			s.stop(i, false)
			_, detail := s.exitReason(i)
			return nil, restartRequest{ReasonStartFailed, "exited while starting: " + detail}
		case <-deadline.C:
			s.stop(i, false)
			return nil, restartRequest{ReasonStartTimeout, fmt.Sprintf("not SERVING within %v", s.opts.StartTimeout)}
		case <-poll.C:
		}
		if err := s.connect(i); err != nil {
			continue
		}
		st, err := i.check(ctx, time.Second)
		if err != nil {
			continue
		}
		if !live {
			live = true
			s.m.up.Set(1)
			s.mu.Lock()
			s.state += "; live, loading the model"
			s.mu.Unlock()
		}
		if st != healthpb.HealthCheckResponse_SERVING {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := i.engine.Info(ictx, &enginev1.InfoRequest{})
		cancel()
		if err != nil {
			continue
		}
		took := time.Since(t0)
		s.m.startDuration.Observe(took.Seconds())
		s.mu.Lock()
		i.info, s.info = info, info
		i.ready, i.lastOK = true, time.Now()
		s.mu.Unlock()
		s.publish()
		s.log.Info("engine ready", "engine_pid", i.pid, "start_seconds", took.Seconds(),
			"model_rev", info.GetModelRev(), "backend", info.GetBackend(), "device", info.GetDevice())
		s.wg.Add(1)
		go s.watchHealth(i)
		return i, restartRequest{}
	}
}

// watch waits until the running instance must be restarted or ctx ends.
func (s *Supervisor) watch(ctx context.Context, i *instance) restartRequest {
	select {
	case <-ctx.Done():
		return restartRequest{}
	case <-i.exited:
		// Fail the jobs in flight now, not after the bookkeeping below.
		i.giveUp()
		reason, detail := s.exitReason(i)
		return restartRequest{reason, detail}
	case req := <-i.restart:
		return req
	}
}

func (s *Supervisor) exitReason(i *instance) (string, string) {
	after, ok := s.oomKills()
	return exitReason(i.status, i.killedByUs.Load(), i.oomBefore, after, ok && i.haveOOM)
}

// recordRestart counts a restart and returns the backoff before the next
// attempt.
func (s *Supervisor) recordRestart(req restartRequest) time.Duration {
	s.mu.Lock()
	s.failures++
	s.restarts++
	s.last = req
	n := s.failures
	d := backoff.Delay(n, s.opts.BackoffMin, s.opts.BackoffMax)
	s.state = fmt.Sprintf("engine restarting after %s (%s), attempt %d in %v", req.reason, req.detail, n, d.Round(time.Millisecond))
	s.mu.Unlock()
	s.m.restarts.WithLabelValues(req.reason).Inc()
	s.publish()
	s.log.Warn("engine restart", "reason", req.reason, "detail", req.detail,
		"consecutive_failures", n, "backoff_seconds", d.Seconds())
	if s.onBackoff != nil {
		s.onBackoff(d)
	}
	return d
}

func (s *Supervisor) setState(state string) {
	s.mu.Lock()
	s.state = state
	s.mu.Unlock()
}

// publish brings the up and ready gauges in line with the current state.
func (s *Supervisor) publish() {
	up, ready := 0.0, 0.0
	if s.Ready() == nil {
		ready = 1
	}
	s.mu.Lock()
	if i := s.cur; i != nil && !i.hasExited() && i.dead.Err() == nil && !i.lastOK.IsZero() &&
		time.Since(i.lastOK) <= s.staleAfter() {
		up = 1
	}
	s.mu.Unlock()
	s.m.up.Set(up)
	s.m.ready.Set(ready)
}

// staleAfter is the age past which the last SERVING answer no longer counts
// for readiness: a few missed checks, well before HealthTimeout restarts it.
func (s *Supervisor) staleAfter() time.Duration {
	return min(3*s.opts.HealthInterval, s.opts.HealthTimeout)
}

// Ready returns nil while the engine is SERVING and takes jobs, or an error
// wrapping ErrUnavailable that says why not. It is derived from the
// engine's state on every call: a process that has exited, stopped
// answering health checks or is being restarted is never ready.
func (s *Supervisor) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readyLocked()
}

func (s *Supervisor) readyLocked() error {
	i := s.cur
	switch {
	case i == nil || i.dead.Err() != nil:
		return fmt.Errorf("%w: %s", ErrUnavailable, s.state)
	case i.hasExited():
		return fmt.Errorf("%w: engine process %d exited", ErrUnavailable, i.pid)
	case !i.ready:
		return fmt.Errorf("%w: %s", ErrUnavailable, s.state)
	case i.pending.reason != "":
		return fmt.Errorf("%w: engine restarting after %s, waiting for %d jobs", ErrUnavailable, i.pending.reason, i.inFlight)
	case i.conn != nil && brokenConn(i.conn.GetState()):
		// The connection notices a dead engine before Wait can reap it.
		return fmt.Errorf("%w: lost the connection to the engine", ErrUnavailable)
	case time.Since(i.lastOK) > s.staleAfter():
		return fmt.Errorf("%w: no SERVING health answer for %v", ErrUnavailable, time.Since(i.lastOK).Round(time.Millisecond))
	}
	return nil
}

// brokenConn reports whether a connection in state st has lost the engine.
// Health checks keep a working connection busy, so it never idles.
func brokenConn(st connectivity.State) bool {
	return st == connectivity.TransientFailure || st == connectivity.Shutdown || st == connectivity.Idle
}

// Info returns what the engine said about itself when it last became
// ready, or nil before that. Limits do not change across restarts.
func (s *Supervisor) Info() *enginev1.InfoResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// Status returns a snapshot of the supervisor.
func (s *Supervisor) Status() Status {
	ready := s.Ready() == nil
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		Ready: ready, Restarts: s.restarts, ConsecutiveFailures: s.failures,
		LastReason: s.last.reason, LastDetail: s.last.detail,
	}
	if i := s.cur; i != nil && !i.hasExited() {
		st.PID = i.pid
		st.InFlight = i.inFlight
	}
	return st
}

// checkRSS updates the memory gauge and, over MaxRSS, restarts the engine
// once its jobs in flight have ended.
func (s *Supervisor) checkRSS(i *instance) {
	p, err := process.NewProcess(int32(i.pid))
	if err != nil {
		return
	}
	mem, err := p.MemoryInfo()
	if err != nil {
		return
	}
	s.m.rss.Set(float64(mem.RSS))
	if s.opts.MaxRSS > 0 && mem.RSS > s.opts.MaxRSS {
		s.drainAndRestart(i, ReasonRSS, fmt.Sprintf("resident memory %d bytes over the limit of %d", mem.RSS, s.opts.MaxRSS))
	}
}

// drainAndRestart stops new jobs on i and restarts it when the jobs in
// flight have ended. The first reason wins.
func (s *Supervisor) drainAndRestart(i *instance, reason, detail string) {
	s.mu.Lock()
	first := i.pending.reason == ""
	if first {
		i.pending = restartRequest{reason, detail}
	}
	idle, req := i.inFlight == 0, i.pending
	s.mu.Unlock()
	if first {
		s.log.Warn("engine restart pending", "reason", reason, "detail", detail)
		s.publish()
	}
	if idle {
		i.requestRestart(req.reason, req.detail)
	}
}

// drained reports whether req is the restart that drainAndRestart asked
// for: the engine finished its jobs and may stop in its own time. Any
// other request (a health failure meanwhile, a wedge) is not.
func (s *Supervisor) drained(i *instance, req restartRequest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return req.reason != "" && i.pending == req
}

// Recycle restarts the engine gracefully: new jobs are refused while the
// jobs in flight finish, then the engine is stopped, started again and
// the restart counted under reason (such as ReasonGPUMemory). It does
// nothing when no engine runs, and a restart already pending keeps its
// own reason.
func (s *Supervisor) Recycle(reason, detail string) {
	s.mu.Lock()
	i := s.cur
	s.mu.Unlock()
	if i == nil || i.hasExited() || i.dead.Err() != nil {
		return
	}
	s.drainAndRestart(i, reason, detail)
}
