package admission

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MiB is a mebibyte, the unit of the memory settings.
const MiB = 1 << 20

// VRAM reports the accelerator memory the engine can use. The gpu
// package's Monitor implements it from NVML.
//
// The rule: Available is the engine process's own GPU memory plus the
// device's free memory. PyTorch's caching allocator keeps what a job freed
// reserved inside the engine, so the device's free memory alone
// undercounts what the next job can use; the engine's own memory, in use
// or cached, is reusable by its jobs. The sum has a useful property: it
// does not change as the engine grows or shrinks, only when another
// process takes or frees memory, so a sample a second old is still right
// about the engine's own jobs.
//
// The Controller admits a job when the estimated peaks of the jobs
// running plus the new job's plus Options.VRAMHeadroom fit in Available.
// A job's peak includes the model's weights, so with more than one slot
// the weights count once per job: the guard then errs on the side of
// waiting.
type VRAM interface {
	// Available returns the memory in bytes, and false when it is not
	// known (no data, a device error); the guard then lets jobs through.
	// It is called with the Controller's mutex held and must not block:
	// it reads the latest sample, it does not take one.
	Available() (bytes uint64, ok bool)
}

// Options configures a Controller. The zero value of every field means the
// default written next to it; the environment variable named in brackets is
// the setting the sidecar's configuration maps onto the field.
type Options struct {
	// Concurrency is the number of jobs that run at once [CONCURRENCY].
	// Default 1.
	Concurrency int
	// QueueDepth is the number of jobs that may wait for a slot
	// [QUEUE_DEPTH]. Zero means no queue: a busy controller turns a job
	// away at once.
	QueueDepth int
	// QueueTimeout bounds a job's wait in the queue [QUEUE_TIMEOUT]; a job
	// whose expected wait is longer is turned away at once. Default 15s.
	QueueTimeout time.Duration
	// FreeQueueShare is the largest share of the queue that free-tier jobs
	// may hold [FREE_QUEUE_SHARE], in (0, 1]; they always get at least one
	// place. Zero means 0.5.
	FreeQueueShare float64
	// DurationPerMegapixel is the time a megapixel of output is expected
	// to take until the first job has been measured
	// [JOB_DURATION_PER_MEGAPIXEL]. Default 8s.
	DurationPerMegapixel time.Duration

	// VRAM turns the memory guard on; nil turns it off.
	VRAM VRAM
	// VRAMHeadroom is kept free beside the jobs' estimated peaks, for the
	// CUDA context and the allocator's fragmentation [VRAM_HEADROOM_MB].
	// Default 1 GiB.
	VRAMHeadroom uint64
	// VRAMBase and VRAMPerMegapixel seed the estimated peak of a job size
	// that has not run yet: VRAMBase + VRAMPerMegapixel × megapixels
	// [VRAM_ESTIMATE_BASE_MB, VRAM_ESTIMATE_MB_PER_MEGAPIXEL]. Defaults
	// 10 GiB (SDXL and a ControlNet in half precision) and 4 GiB. The
	// engine's reported peaks replace the seed size by size.
	VRAMBase         uint64
	VRAMPerMegapixel uint64
	// VRAMPollInterval is how often a job waiting for memory looks again
	// when no job has ended meanwhile. Default 100ms.
	VRAMPollInterval time.Duration

	// Ready, when not nil, is asked before every job; an error turns the
	// job away with ReasonNotReady, so that a restarting engine costs no
	// storage read.
	Ready func() error
	// UnavailableRetryAfter is the Retry-After of ReasonNotReady and
	// ReasonDraining. Default 5s.
	UnavailableRetryAfter time.Duration

	// Registerer receives the metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

func (o Options) withDefaults() (Options, error) {
	switch {
	case o.Concurrency < 0:
		return o, errors.New("admission: Concurrency must not be negative")
	case o.QueueDepth < 0:
		return o, errors.New("admission: QueueDepth must not be negative")
	case o.QueueTimeout < 0 || o.DurationPerMegapixel < 0 || o.VRAMPollInterval < 0 || o.UnavailableRetryAfter < 0:
		return o, errors.New("admission: durations must not be negative")
	case math.IsNaN(o.FreeQueueShare) || o.FreeQueueShare < 0 || o.FreeQueueShare > 1:
		return o, fmt.Errorf("admission: FreeQueueShare must be in (0, 1], got %v", o.FreeQueueShare)
	}
	if o.Concurrency == 0 {
		o.Concurrency = 1
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.QueueTimeout, 15*time.Second)
	def(&o.DurationPerMegapixel, 8*time.Second)
	def(&o.VRAMPollInterval, 100*time.Millisecond)
	def(&o.UnavailableRetryAfter, 5*time.Second)
	if o.FreeQueueShare == 0 {
		o.FreeQueueShare = 0.5
	}
	if o.VRAMHeadroom == 0 {
		o.VRAMHeadroom = 1024 * MiB
	}
	if o.VRAMBase == 0 {
		o.VRAMBase = 10 * 1024 * MiB
	}
	if o.VRAMPerMegapixel == 0 {
		o.VRAMPerMegapixel = 4 * 1024 * MiB
	}
	return o, nil
}
