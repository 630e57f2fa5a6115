package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// Domain is the google.rpc.ErrorInfo domain of the failures the engine
// reports itself.
const Domain = "engine.vstage"

// Failure reasons the engine attaches to its status codes (see the
// protocol's documentation for the full list).
const (
	FailureOOM           = "oom"
	FailureImageTooLarge = "image_too_large"
	FailureNotReady      = "not_ready"
)

// maxJobIDBytes leaves room in the engine's 128-byte job id for the
// sequence number the supervisor appends.
const maxJobIDBytes = 100

// errNoResult marks a stream that the engine ended cleanly without a result.
var errNoResult = errors.New("engine: the job's stream ended without a result")

// Reason returns the reason the engine attached to the gRPC status in err's
// chain, or "" when err carries none: the error did not come from the
// engine's own code, such as a transport failure or a local cancellation.
func Reason(err error) string {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason()
		}
	}
	return ""
}

// job is the supervisor's record of a job sent to the engine, kept until
// the engine acknowledges its end or is given up.
type job struct {
	wire    string
	endOnce sync.Once
	// Guarded by Supervisor.mu.
	acked bool
	onAck func()
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
// A job counts as in flight, for the jobs_in_flight metric, for
// Options.Slots and for restarts that wait for jobs to end, until the
// engine acknowledges its end (the stream ends with a status, or after a
// cancellation the engine logs that the job stopped) or the engine is given
// up. An engine that acknowledges no end for WedgeGrace after one was due,
// while no other job progresses, is restarted as wedged. A job without a
// deadline that is never cancelled is never judged wedged.
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
	wire := proto.Clone(req).(*enginev1.StageRequest)
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
	case Reason(err) != "":
		// The engine ended the job itself: that is its acknowledgement.
		if status.Code(err) == codes.ResourceExhausted && Reason(err) == FailureOOM {
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

func stream(ctx context.Context, i *instance, req *enginev1.StageRequest) (*enginev1.Result, error) {
	st, err := i.engine.Stage(ctx, req)
	if err != nil {
		return nil, err
	}
	var res *enginev1.Result
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			if res == nil {
				return nil, errNoResult
			}
			return res, nil
		}
		if err != nil {
			return nil, err
		}
		i.touch()
		if r := ev.GetResult(); r != nil {
			res = r
		}
	}
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
	i.acks[j.wire] = j
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
		delete(i.acks, j.wire)
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

// acknowledge records that the engine logged the end of job id.
func (s *Supervisor) acknowledge(i *instance, id string) {
	i.touch()
	s.mu.Lock()
	j := i.acks[id]
	var hook func()
	if j != nil {
		j.acked = true
		hook = j.onAck
	}
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
}

// awaitEnd keeps j in flight until the engine acknowledges its end or is
// given up, and declares the engine wedged if neither happens within
// WedgeGrace while nothing else progresses. It uses timers and callbacks,
// not a goroutine, so nothing outlives the instance.
func (s *Supervisor) awaitEnd(i *instance, j *job) {
	grace := s.opts.WedgeGrace
	var (
		mu       sync.Mutex
		done     bool
		timer    *time.Timer
		stopDead func() bool
	)
	finish := func() {
		mu.Lock()
		done = true
		timer.Stop()
		stopDead()
		mu.Unlock()
		s.end(i, j)
	}
	var check func()
	check = func() {
		mu.Lock()
		defer mu.Unlock()
		if done || i.dead.Err() != nil {
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

	// Held while registering, so that an acknowledgement or the engine's
	// end arriving meanwhile finds the timer and the callback in place.
	mu.Lock()
	defer mu.Unlock()
	s.mu.Lock()
	acked := j.acked
	if !acked {
		j.onAck = finish
	}
	s.mu.Unlock()
	if acked {
		done = true
		s.end(i, j)
		return
	}
	timer = time.AfterFunc(grace, check)
	stopDead = context.AfterFunc(i.dead, finish)
}
