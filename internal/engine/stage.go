package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// Domain is the google.rpc.ErrorInfo domain of the failures the engine
// reports itself.
const Domain = "engine.vstage"

// Cancel retries: an engine that answers Cancel with an error (not a
// dropped connection, which the call waits out) is asked again at this
// pace until it answers, or is declared wedged and given up.
const (
	cancelRetryMin = 100 * time.Millisecond
	cancelRetryMax = 2 * time.Second
)

// maxJobIDBytes leaves room in the engine's 128-byte job id for the
// sequence number the supervisor appends.
const maxJobIDBytes = 100

// errNoResult marks a stream that the engine ended cleanly without a result.
var errNoResult = errors.New("engine: the job's stream ended without a result")

// Reason returns the failure reason the engine attached to the gRPC status
// in err's chain, or FAILURE_REASON_UNSPECIFIED when err carries none: the
// error did not come from the engine's own code, such as a transport
// failure or a local cancellation.
func Reason(err error) enginev1.FailureReason {
	info := errorInfo(err)
	if info == nil {
		return enginev1.FailureReason_FAILURE_REASON_UNSPECIFIED
	}
	return enginev1.FailureReason(enginev1.FailureReason_value[info.GetReason()])
}

// errorInfo returns the engine's ErrorInfo in err's status, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info
		}
	}
	return nil
}

// job is the supervisor's record of a job sent to the engine, kept until
// the engine says that it has ended or is given up.
type job struct {
	wire    string
	endOnce sync.Once
}

// Stage sends req to the engine and returns the job's result.
//
// The call carries ctx's deadline and cancellation to the engine. The job
// id the engine sees is req's with a per-engine sequence number appended,
// so that each job can be told apart in its logs. An engine that is not
// ready, or that dies or is restarted during the job, yields an error
// wrapping ErrUnavailable; the engine's own failures are gRPC status errors
// whose reason Reason returns; a job cancelled by ctx returns the gRPC
// status of the cancellation.
//
// Outgoing gRPC metadata in ctx travels with the call, as with any gRPC
// client.
//
// A job counts as in flight, for the jobs_in_flight metric, for
// Options.Slots and for restarts that wait for jobs to end, until the
// engine says that it has ended or the engine is given up. The engine says
// so by sending the result or by ending the stream with a status; for a job
// that ended on this side first (ctx ended, or the connection broke under a
// live engine), by answering the Engine.Cancel call the supervisor then
// makes.
// An engine that does not answer it within WedgeGrace, while no other job
// progresses, is restarted as wedged. A job without a deadline that is
// never cancelled is never judged wedged.
func (s *Supervisor) Stage(ctx context.Context, req *enginev1.StageRequest) (*enginev1.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	i, j, err := s.begin(req.GetJobId())
	if err != nil {
		s.releaseSlot()
		return nil, err
	}
	wire := shallowCopy(req)
	wire.JobId = j.wire
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopAfter := context.AfterFunc(i.dead, cancel)
	defer stopAfter()

	res, err := stream(callCtx, i, wire)
	switch {
	case err == nil:
		s.end(i, j)
		return res, nil
	case errors.Is(err, errNoResult):
		s.end(i, j)
		return nil, err
	case errorInfo(err) != nil:
		// The engine ended the job itself and said so.
		if status.Code(err) == codes.ResourceExhausted && Reason(err) == enginev1.FailureReason_FAILURE_REASON_OOM {
			s.drainAndRestart(i, ReasonCUDAOOM, "job "+j.wire+" ran out of accelerator memory")
		}
		s.end(i, j)
		return nil, err
	case i.dead.Err() != nil:
		s.end(i, j)
		return nil, fmt.Errorf("%w: the engine stopped during job %s: %w", ErrUnavailable, req.GetJobId(), err)
	}
	// Cancelled or timed out on our side, or the connection broke: the
	// engine has not said that the job is over.
	s.awaitEnd(i, j)
	if ctx.Err() == nil {
		return nil, fmt.Errorf("%w: lost the engine during job %s: %w", ErrUnavailable, req.GetJobId(), err)
	}
	return nil, err
}

// stream runs the call and returns the job's result as soon as it arrives.
// The result is the engine's last word on the job, so the status that
// follows it is not waited for: that would add a round trip through the
// engine's server to every job. The caller cancels ctx when stream returns,
// which ends the call on both sides.
func stream(ctx context.Context, i *instance, req *enginev1.StageRequest) (*enginev1.Result, error) {
	st, err := i.engine.Stage(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil, errNoResult
		}
		if err != nil {
			return nil, err
		}
		i.touch()
		if r := ev.GetResult(); r != nil {
			return r, nil
		}
	}
}

// shallowCopy returns a copy of req that shares its byte slices (the image
// and mask, often hundreds of kilobytes) instead of copying them, as
// proto.Clone would. Neither copy may be modified in place afterwards.
func shallowCopy(req *enginev1.StageRequest) *enginev1.StageRequest {
	out := &enginev1.StageRequest{}
	dst := out.ProtoReflect()
	req.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	return out
}

// begin admits a job on the current instance.
func (s *Supervisor) begin(id string) (*instance, *job, error) {
	s.mu.Lock()
	if err := s.readyLocked(); err != nil {
		s.mu.Unlock()
		return nil, nil, err
	}
	i := s.cur
	i.seq++
	if len(id) > maxJobIDBytes {
		id = id[:maxJobIDBytes]
	}
	j := &job{wire: fmt.Sprintf("%s~%d", id, i.seq)}
	i.inFlight++
	i.jobs++
	limit := s.opts.MaxJobs > 0 && i.jobs >= s.opts.MaxJobs
	s.mu.Unlock()
	s.m.inFlight.Inc()
	if limit {
		s.drainAndRestart(i, ReasonMaxJobs, fmt.Sprintf("ran %d jobs", s.opts.MaxJobs))
	}
	return i, j, nil
}

// end releases a job once; the last job of a draining instance triggers
// its restart.
func (s *Supervisor) end(i *instance, j *job) {
	j.endOnce.Do(func() {
		s.mu.Lock()
		i.inFlight--
		idle, req := i.inFlight == 0, i.pending
		s.mu.Unlock()
		s.m.inFlight.Dec()
		s.releaseSlot()
		if idle && req.reason != "" {
			i.requestRestart(req.reason, req.detail)
		} else if idle {
			// Between jobs is when memory growth is judged.
			s.checkRSS(i)
		}
	})
}

func (s *Supervisor) releaseSlot() {
	if s.slots != nil {
		<-s.slots
	}
}

// awaitEnd keeps j in flight until the engine answers Cancel for it or is
// given up. The Cancel call runs on a goroutine counted in s.wg, which ends
// with the instance at the latest; a job that ends while the supervisor is
// stopping is released at once.
func (s *Supervisor) awaitEnd(i *instance, j *job) {
	s.mu.Lock()
	if s.closed || i.dead.Err() != nil {
		s.mu.Unlock()
		s.end(i, j)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer s.end(i, j)
		stop := s.watchWedge(i, j)
		defer stop()
		s.cancel(i, j)
	}()
}

// cancel asks the engine to stop j until it answers or the instance is
// given up. A broken connection is waited out (WaitForReady); an error
// answer is retried with a growing pause.
func (s *Supervisor) cancel(i *instance, j *job) {
	pause := cancelRetryMin
	for {
		resp, err := i.engine.Cancel(i.dead, &enginev1.CancelRequest{JobId: j.wire}, grpc.WaitForReady(true))
		if err == nil {
			i.touch()
			s.log.Debug("engine job ended", "job_id", j.wire, "outcome", resp.GetOutcome().String())
			return
		}
		if i.dead.Err() != nil {
			return
		}
		s.log.Warn("engine cancel failed", "job_id", j.wire, "error", err, "retry_in_seconds", pause.Seconds())
		t := time.NewTimer(pause)
		select {
		case <-i.dead.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, cancelRetryMax)
	}
}

// watchWedge declares the engine wedged when j is still in flight
// WedgeGrace from now while nothing else progressed meanwhile, and returns
// a function that stops the watch. It uses timers, not a goroutine.
func (s *Supervisor) watchWedge(i *instance, j *job) (stop func()) {
	grace := s.opts.WedgeGrace
	var (
		mu      sync.Mutex
		stopped bool
		timer   *time.Timer
	)
	var check func()
	check = func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped || i.dead.Err() != nil {
			return
		}
		if idle := i.sinceProgress(); idle < grace {
			timer = time.AfterFunc(grace-idle, check)
			return
		}
		s.log.Error("engine wedged", "job_id", j.wire, "grace_seconds", grace.Seconds())
		i.requestRestart(ReasonWedged, fmt.Sprintf(
			"job %s did not end within %v of its cancellation or deadline, and no job progressed", j.wire, grace))
	}
	mu.Lock()
	timer = time.AfterFunc(grace, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		timer.Stop()
		mu.Unlock()
	}
}
