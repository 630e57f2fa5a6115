// Package queue puts staging jobs on asynq queues in Redis, one queue per
// tier, and reads those queues' state for the metrics and the operator's
// commands.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/tracing"
)

// TaskType is the asynq task type of a staging job.
const TaskType = "vstage:stage"

// ErrFull is returned by Enqueue when the tier's queue holds its cap.
var ErrFull = errors.New("queue: the queue is full, try later")

// ErrDuplicate is returned by Enqueue when a task with the image_id exists.
var ErrDuplicate = errors.New("queue: a job for this image_id is already queued")

// Payload is a task's body: the image to stage and its tier.
type Payload struct {
	Image store.Image `json:"image"`
	Tier  string      `json:"tier"`
	// Traceparent is the W3C trace context of the span that enqueued the
	// job, if any; the job's span links to it.
	Traceparent string `json:"traceparent,omitempty"`
}

// Decode reads a task's payload.
func Decode(t *asynq.Task) (Payload, error) {
	var p Payload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return Payload{}, fmt.Errorf("queue: task payload: %w", err)
	}
	if p.Image.ID == "" || p.Tier == "" {
		return Payload{}, errors.New("queue: task payload lacks the image_id or the tier")
	}
	return p, nil
}

// Options are the task options of every job.
type Options struct {
	// Caps bounds each tier queue's live tasks: pending, scheduled,
	// retrying and running.
	Caps map[string]int
	// MaxRetry is asynq's retry budget of a job.
	MaxRetry int
	// Deadline bounds one attempt.
	Deadline time.Duration
	// Retention keeps a finished task, and so its id, for this long.
	Retention time.Duration
}

// Queue enqueues jobs and inspects the queues.
type Queue struct {
	client    *asynq.Client
	inspector *asynq.Inspector
	opts      Options
}

// New returns a Queue on the Redis at conn.
func New(conn asynq.RedisConnOpt, opts Options) *Queue {
	return &Queue{client: asynq.NewClient(conn), inspector: asynq.NewInspector(conn), opts: opts}
}

// Close closes the Redis connections.
func (q *Queue) Close() error {
	return errors.Join(q.client.Close(), q.inspector.Close())
}

// Enqueue puts p on its tier's queue with the image_id as the task id, so
// a second enqueue of the same image is refused with ErrDuplicate instead
// of running twice. A queue at its cap refuses with ErrFull. The cap is
// read just before the enqueue, so enqueuers racing each other can pass
// it by at most their own number.
//
// The task carries the trace context of ctx's span, if any, unless p
// already names one.
func (q *Queue) Enqueue(ctx context.Context, p Payload) error {
	if p.Traceparent == "" {
		p.Traceparent = tracing.Traceparent(ctx)
	}
	live, err := q.Live(p.Tier)
	if err != nil {
		return err
	}
	if c := q.opts.Caps[p.Tier]; live >= c {
		return fmt.Errorf("%w: %s holds %d of %d", ErrFull, p.Tier, live, c)
	}
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("queue: encoding the payload: %w", err)
	}
	_, err = q.client.EnqueueContext(ctx, asynq.NewTask(TaskType, body),
		asynq.Queue(p.Tier), asynq.TaskID(p.Image.ID), asynq.MaxRetry(q.opts.MaxRetry),
		asynq.Timeout(q.opts.Deadline), asynq.Retention(q.opts.Retention))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return ErrDuplicate
	}
	if err != nil {
		return fmt.Errorf("queue: enqueuing: %w", err)
	}
	return nil
}

// Live returns the tasks of queue name that are not finished: pending,
// scheduled, retrying, running or aggregating.
func (q *Queue) Live(name string) (int, error) {
	info, err := q.Info(name)
	if err != nil {
		return 0, err
	}
	return info.Pending + info.Scheduled + info.Retry + info.Active + info.Aggregating, nil
}

// Info returns the state of queue name; a queue that never held a task is
// empty, not an error.
func (q *Queue) Info(name string) (*asynq.QueueInfo, error) {
	info, err := q.inspector.GetQueueInfo(name)
	if err == nil {
		return info, nil
	}
	// asynq's not-found error is internal; a queue is known once it has
	// held a task.
	known, lerr := q.inspector.Queues()
	if lerr == nil && !slices.Contains(known, name) {
		return &asynq.QueueInfo{Queue: name}, nil
	}
	return nil, fmt.Errorf("queue: reading queue %s: %w", name, err)
}

// Pause stops the workers from starting the queue's tasks; running jobs
// finish and queued ones stay. Pausing a paused queue is not an error.
func (q *Queue) Pause(name string) error {
	err := q.inspector.PauseQueue(name)
	// asynq reports "already paused" only as text.
	if err != nil && !strings.Contains(err.Error(), "already paused") {
		return fmt.Errorf("queue: pausing %s: %w", name, err)
	}
	return nil
}

// Resume undoes Pause. Resuming a running queue is not an error.
func (q *Queue) Resume(name string) error {
	err := q.inspector.UnpauseQueue(name)
	if err != nil && !strings.Contains(err.Error(), "not paused") {
		return fmt.Errorf("queue: resuming %s: %w", name, err)
	}
	return nil
}
