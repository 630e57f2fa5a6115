package admission

import (
	"fmt"
	"time"

	"github.com/vstage/vstage/internal/fault"
)

// Reason says why a job was turned away. It is the value of the reason
// label of vstage_admission_rejections_total.
type Reason string

// The reasons for a rejection.
const (
	// ReasonQueueFull: every slot is busy and the queue (or the free
	// tier's share of it) has no place left.
	ReasonQueueFull Reason = "queue_full"
	// ReasonQueueTimeout: the expected wait was longer than QueueTimeout,
	// or the job did wait that long.
	ReasonQueueTimeout Reason = "queue_timeout"
	// ReasonVRAM: the accelerator's memory cannot hold the job now, and it
	// could not wait for it.
	ReasonVRAM Reason = "vram"
	// ReasonDraining: the controller is draining for shutdown.
	ReasonDraining Reason = "draining"
	// ReasonNotReady: Options.Ready reported that jobs cannot run now.
	ReasonNotReady Reason = "not_ready"
)

var reasons = []Reason{ReasonQueueFull, ReasonQueueTimeout, ReasonVRAM, ReasonDraining, ReasonNotReady}

// Rejection is the cause of every error Acquire returns for a job it
// turns away. Acquire wraps it in a *fault.Error, so errors.As finds both.
type Rejection struct {
	Reason Reason
	// RetryAfter is the estimated time until the job could start: the
	// work ahead of it divided among the slots, from recent job durations;
	// at least a second.
	RetryAfter time.Duration
	Message    string
	// Err is the cause when there is one, such as the engine's readiness
	// error behind ReasonNotReady; it is for logs and errors.Is.
	Err error
}

// Error returns the reason and the message, and the cause if any.
func (r *Rejection) Error() string {
	if r.Err != nil {
		return fmt.Sprintf("admission: %s: %s: %v", r.Reason, r.Message, r.Err)
	}
	return fmt.Sprintf("admission: %s: %s", r.Reason, r.Message)
}

// Unwrap returns the cause.
func (r *Rejection) Unwrap() error { return r.Err }

// Code is the fault code a rejection maps to: Unavailable when the
// service cannot take jobs at all (draining, not ready), Overloaded when
// it is only busy.
func (r *Rejection) Code() fault.Code {
	if r.Reason == ReasonDraining || r.Reason == ReasonNotReady {
		return fault.Unavailable
	}
	return fault.Overloaded
}

// fault wraps r in the error model, with its retry delay for the client.
func (r *Rejection) fault() *fault.Error {
	return &fault.Error{
		Code: r.Code(), Message: r.Message, Retryable: true,
		RetryAfter: r.RetryAfter, Err: r,
	}
}
