package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

type outcome struct {
	err  error
	took time.Duration
}

// stageMany runs n jobs at once and returns their outcomes once all ended.
func stageMany(h *harness, n int, timeout time.Duration, faults string) (<-chan []outcome, func() int) {
	out := make(chan []outcome, 1)
	res := make([]outcome, n)
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			t0 := time.Now()
			_, err := h.s.Stage(withFault(ctx, faults), stageRequest(fmt.Sprintf("job-%d", k)))
			res[k] = outcome{err, time.Since(t0)}
		})
	}
	go func() {
		wg.Wait()
		out <- res
	}()
	return out, func() int { return h.s.Status().InFlight }
}

// SIGKILL during 8 concurrent jobs: every job fails over to ErrUnavailable
// long before it would have ended, the restart is counted, and the engine is ready again.
func TestChaosKillDuringConcurrentJobs(t *testing.T) {
	t.Parallel()
	// No cgroup counter: a SIGKILL we did not send is taken for an OOM kill.
	h := start(t, python(t), func(s *Supervisor) { s.oomKills = func() (uint64, bool) { return 0, false } })
	h.waitReady(20 * time.Second)
	pid := h.s.Status().PID

	results, inFlight := stageMany(h, 8, 30*time.Second, "sleep=20")
	h.waitFor("8 jobs in flight", 5*time.Second, func() bool { return inFlight() == 8 })
	time.Sleep(200 * time.Millisecond) // into their denoising loops
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var res []outcome
	select {
	case res = <-results:
	case <-time.After(5 * time.Second):
		t.Fatal("jobs did not end after the engine was killed")
	}
	answered := time.Since(killed)
	for k, r := range res {
		if !errors.Is(r.err, ErrUnavailable) {
			t.Errorf("job %d: %v, want ErrUnavailable", k, r.err)
		}
	}
	// The jobs had 20 s left: an answer well before that came from the
	// supervisor noticing the death, not from the jobs' own ends.
	if answered > 10*time.Second {
		t.Errorf("last job answered %v after the kill, want well before the jobs' 20 s", answered)
	}
	h.waitFor("a new engine ready", 20*time.Second, func() bool {
		return h.s.Ready() == nil && h.s.Status().PID != pid
	})
	readyAfter := time.Since(killed)
	t.Logf("all 8 jobs answered %v after SIGKILL; ready again %v after it", answered.Round(time.Millisecond), readyAfter.Round(time.Millisecond))
	if h.restarts(ReasonOOMKill) != 1 {
		t.Errorf("oom_kill restarts %v, want 1", h.restarts(ReasonOOMKill))
	}
	if testutil.ToFloat64(h.s.m.inFlight) != 0 {
		t.Errorf("status after restart %+v", h.s.Status())
	}
	if _, err := h.s.Stage(context.Background(), stageRequest("after")); err != nil {
		t.Errorf("job after restart: %v", err)
	}
}

// An engine that exits with a code during a job: the job gets
// ErrUnavailable and the restart is counted as an exit.
func TestChaosCrashDuringJob(t *testing.T) {
	t.Parallel()
	h := start(t, python(t))
	h.waitReady(20 * time.Second)
	_, err := h.s.Stage(withFault(context.Background(), "crash=70"), stageRequest("crash"))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Stage = %v, want ErrUnavailable", err)
	}
	h.waitFor("exit restart", 5*time.Second, func() bool { return h.restarts(ReasonExit) == 1 })
	if st := h.s.Status(); st.LastDetail != "exit code 70" {
		t.Errorf("status %+v", st)
	}
	h.waitReady(20 * time.Second)
}

// A job that ignores its deadline wedges the engine: the caller gets its
// deadline, and the engine is restarted WedgeGrace later.
func TestChaosHangingJobIsWedged(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.WedgeGrace = time.Second
	h := start(t, o)
	h.waitReady(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	t0 := time.Now()
	// DeadlineExceeded, not Unavailable: the call ended at its deadline,
	// not at the wedged restart one WedgeGrace later.
	_, err := h.s.Stage(withFault(ctx, "hang=job"), stageRequest("hang"))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Stage = %v after %v, want DeadlineExceeded at the deadline", err, time.Since(t0))
	}
	took := h.waitFor("wedged restart", 5*time.Second, func() bool { return h.restarts(ReasonWedged) == 1 })
	t.Logf("wedged restart %v after the deadline", (time.Since(t0) - time.Second).Round(time.Millisecond))
	_ = took
	h.waitReady(20 * time.Second)
	if h.s.Status().InFlight != 0 {
		t.Errorf("status %+v", h.s.Status())
	}
}

// A stopped process answers nothing: readiness drops within a few health
// intervals, the job in flight fails over, and the engine is restarted after
// HealthTimeout.
func TestChaosStoppedProcessFailsHealth(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.HealthTimeout = time.Second
	h := start(t, o)
	h.waitReady(20 * time.Second)
	t0 := time.Now()
	_, err := h.s.Stage(withFault(context.Background(), "hang=process"), stageRequest("stop"))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Stage = %v, want ErrUnavailable", err)
	}
	t.Logf("job answered %v after the engine stopped", time.Since(t0).Round(time.Millisecond))
	h.waitFor("health restart", 5*time.Second, func() bool { return h.restarts(ReasonHealth) == 1 })
	h.waitReady(20 * time.Second)
}

// Readiness is derived from live state: a stopped engine is not ready well
// before it is restarted.
func TestReadyDropsWhenHealthStopsAnswering(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.HealthTimeout = 5 * time.Second
	h := start(t, o)
	h.waitReady(20 * time.Second)
	pid := h.s.Status().PID
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	took := h.waitFor("not ready", 2*time.Second, func() bool { return h.s.Ready() != nil })
	t.Logf("not ready %v after SIGSTOP: %v", took.Round(time.Millisecond), h.s.Ready())
	if h.restarts(ReasonHealth) != 0 {
		t.Error("restarted before HealthTimeout")
	}
	h.waitFor("ready gauge 0", time.Second, func() bool { return testutil.ToFloat64(h.s.m.ready) == 0 })
	_ = syscall.Kill(pid, syscall.SIGCONT)
	h.waitReady(5 * time.Second)
}

// CUDA OOM: the job gets the engine's oom status, new jobs are refused,
// the job already running finishes, then the engine restarts.
func TestChaosOOMRestartsAfterJobsInFlight(t *testing.T) {
	t.Parallel()
	h := start(t, python(t))
	h.waitReady(20 * time.Second)
	pid := h.s.Status().PID
	slow := make(chan error, 1)
	go func() {
		_, err := h.s.Stage(withFault(context.Background(), "sleep=1.5"), stageRequest("slow"))
		slow <- err
	}()
	h.waitFor("slow job in flight", 5*time.Second, func() bool { return h.s.Status().InFlight == 1 })
	_, err := h.s.Stage(withFault(context.Background(), "oom"), stageRequest("oom"))
	if status.Code(err) != codes.ResourceExhausted || Reason(err) != enginev1.FailureReason_FAILURE_REASON_OOM {
		t.Fatalf("Stage = %v, want RESOURCE_EXHAUSTED oom", err)
	}
	if err := h.s.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready after OOM = %v, want not ready while draining", err)
	}
	if _, err := h.s.Stage(context.Background(), stageRequest("refused")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("new job while draining: %v", err)
	}
	if h.restarts(ReasonCUDAOOM) != 0 {
		t.Error("restarted before the running job ended")
	}
	if err := <-slow; err != nil {
		t.Errorf("the job in flight failed: %v", err)
	}
	h.waitFor("cuda_oom restart", 5*time.Second, func() bool { return h.restarts(ReasonCUDAOOM) == 1 })
	h.waitReady(20 * time.Second)
	if h.s.Status().PID == pid {
		t.Error("same engine after the OOM restart")
	}
}

// An engine that crashes at every start-up keeps Ready false with the
// reason, and its restarts back off.
func TestChaosCrashAtStartup(t *testing.T) {
	t.Parallel()
	o := python(t, "--start-fault", "crash")
	o.BackoffMin, o.BackoffMax = 50*time.Millisecond, 400*time.Millisecond
	h := start(t, o)
	h.waitFor("4 failed starts", 20*time.Second, func() bool { return h.restarts(ReasonStartFailed) >= 4 })
	for range 20 {
		// Between attempts and during them alike, Ready names the cause.
		if err := h.s.Ready(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "start_failed") {
			t.Fatalf("Ready = %v", err)
		}
		time.Sleep(15 * time.Millisecond)
	}
	if b := h.backoffs(); len(b) < 4 || b[3] <= b[0] {
		t.Errorf("backoffs %v do not grow", b)
	}
	if testutil.ToFloat64(h.s.m.ready) != 0 || testutil.ToFloat64(h.s.m.up) != 0 {
		t.Error("gauges say up or ready")
	}
	t.Logf("Ready: %v", h.s.Ready())
}

// Resident memory over MaxRSS restarts the engine between jobs.
func TestChaosRSSLimit(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.MaxRSS = 1 << 20 // far below any Python process
	h := start(t, o)
	h.waitFor("rss restart", 20*time.Second, func() bool { return h.restarts(ReasonRSS) >= 1 })
	if st := h.s.Status(); st.LastReason != ReasonRSS {
		t.Errorf("status %+v", st)
	}
}

// MaxJobs restarts the engine after that many jobs, and jobs work again
// after it.
func TestChaosMaxJobs(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.MaxJobs = 2
	h := start(t, o)
	h.waitReady(20 * time.Second)
	pid := h.s.Status().PID
	for k := range 2 {
		if _, err := h.s.Stage(context.Background(), stageRequest(fmt.Sprint(k))); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("max_jobs restart", 5*time.Second, func() bool { return h.restarts(ReasonMaxJobs) == 1 })
	h.waitReady(20 * time.Second)
	if h.s.Status().PID == pid {
		t.Error("same engine")
	}
	if _, err := h.s.Stage(context.Background(), stageRequest("3")); err != nil {
		t.Error(err)
	}
}

// Recycle drains the engine and restarts it under the given reason; a
// second call while the restart is pending changes nothing.
func TestChaosRecycle(t *testing.T) {
	t.Parallel()
	h := start(t, python(t))
	h.waitReady(20 * time.Second)
	pid := h.s.Status().PID
	h.s.Recycle(ReasonGPUMemory, "engine GPU memory over the limit")
	h.s.Recycle(ReasonRSS, "a later reason")
	h.waitFor("gpu_memory restart", 10*time.Second, func() bool { return h.restarts(ReasonGPUMemory) == 1 })
	h.waitReady(20 * time.Second)
	if st := h.s.Status(); st.PID == pid || st.LastReason != ReasonGPUMemory {
		t.Errorf("status %+v", st)
	}
	if n := h.restarts(ReasonRSS); n != 0 {
		t.Errorf("rss restarts = %v", n)
	}
	if _, err := h.s.Stage(context.Background(), stageRequest("after")); err != nil {
		t.Error(err)
	}
}

// With the cgroup's OOM-kill counter readable, a SIGKILL that did not come
// from the kernel is counted as a signal, not as an OOM kill.
func TestChaosSIGKILLNotFromTheKernel(t *testing.T) {
	t.Parallel()
	if _, ok := oomKills(); !ok {
		t.Log("no cgroup OOM-kill counter here; the heuristic is covered by TestExitReason")
	}
	h := start(t, python(t))
	h.waitReady(20 * time.Second)
	_, err := h.s.Stage(withFault(context.Background(), "crash=kill"), stageRequest("kill"))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Stage = %v", err)
	}
	want := ReasonSignal
	if _, ok := oomKills(); !ok {
		want = ReasonOOMKill
	}
	h.waitFor(want+" restart", 5*time.Second, func() bool { return h.restarts(want) == 1 })
	h.waitReady(20 * time.Second)
}

// An engine that answers health but never becomes SERVING is live, not
// ready, and is restarted after StartTimeout.
func TestChaosNeverReady(t *testing.T) {
	t.Parallel()
	o := python(t, "--start-fault", "never-ready")
	// Long enough for a loaded machine to start the engine's Python and
	// reach live; the test is about what happens after.
	o.StartTimeout = 5 * time.Second
	h := start(t, o)
	h.waitFor("live", 20*time.Second, func() bool { return testutil.ToFloat64(h.s.m.up) == 1 })
	if err := h.s.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready = %v", err)
	}
	h.waitFor("start_timeout restart", 20*time.Second, func() bool { return h.restarts(ReasonStartTimeout) >= 1 })
}

// A slot is held until the engine says the job has ended, or is given up:
// the next job waits for it and never reaches a wedged engine.
func TestSlotHeldUntilTheEngineLetsGo(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.Slots = 1
	o.WedgeGrace = time.Second
	h := start(t, o)
	h.waitReady(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := h.s.Stage(withFault(ctx, "hang=job"), stageRequest("hung")); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Stage = %v", err)
	}
	t0 := time.Now()
	_, err := h.s.Stage(context.Background(), stageRequest("next"))
	waited := time.Since(t0)
	if !errors.Is(err, ErrUnavailable) || waited < 500*time.Millisecond {
		t.Errorf("next job: %v after %v; want ErrUnavailable once the wedged engine is given up", err, waited)
	}
	if hasLine(h.logs.String(), `"job_id":"next~`) {
		t.Error("the next job reached the wedged engine")
	}
	h.waitReady(20 * time.Second)
	if _, err := h.s.Stage(context.Background(), stageRequest("after")); err != nil {
		t.Errorf("after the restart: %v", err)
	}
	// A caller that gives up waiting for a slot gets its context's error.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	long := make(chan error, 1)
	go func() {
		_, err := h.s.Stage(withFault(ctx2, "sleep=0.5"), stageRequest("long"))
		long <- err
	}()
	h.waitFor("long job in flight", 5*time.Second, func() bool { return h.s.Status().InFlight == 1 })
	ctx3, cancel3 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel3()
	if _, err := h.s.Stage(ctx3, stageRequest("impatient")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("impatient job: %v", err)
	}
	if err := <-long; err != nil {
		t.Errorf("long job: %v", err)
	}
}
