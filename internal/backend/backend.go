// Package backend defines the Backend interface, the one seam between the
// staging use case and whatever produces a staged image, and its mock
// implementation. The self (engine) and managed (hosted provider) backends
// implement the same interface.
package backend

import (
	"context"
	"time"

	"github.com/vstage/vstage/internal/imagecheck"
)

// Job is one staging job, fully resolved: the input bytes have passed the
// header checks, the prompts are written, and every parameter has a value.
type Job struct {
	// ID identifies the job in logs and backend calls; it is the request's
	// image_id.
	ID string
	// Image is the original, as stored; Info is what its header says.
	Image []byte
	Info  imagecheck.Info
	// Mask, when not nil, marks in white the pixels to repaint; it has the
	// original's displayed size.
	Mask []byte

	Prompt         string
	NegativePrompt string
	Seed           uint32
	Strength       float64
	GuidanceScale  float64
	// ControlNetConditioningScale weighs the structure-preserving
	// conditioning.
	ControlNetConditioningScale float64
	// OutputLongSide is the long side of the render in pixels.
	OutputLongSide int
	// UpscaleLongSide, when not zero, is the long side of the result: the
	// render is upscaled to it (by the engine's refinement in self mode, by
	// resampling elsewhere, with WarningUpscaleResampled).
	UpscaleLongSide int
}

// The warnings a Result may carry, as the answer passes them on.
const (
	// WarningUpscaleResampled: the upscale was a resampling only, without
	// the model's refinement.
	WarningUpscaleResampled = "upscale_resampled_only"
	// WarningPeopleDetected: the content policy (warn) found a face or a
	// person in the photo.
	WarningPeopleDetected = "people_detected"
	// WarningStructureCheckFailed: no render kept enough of the original's
	// edges (QA_STRUCTURE_MIN).
	WarningStructureCheckFailed = "structure_check_failed"
)

// Result is a staged image.
type Result struct {
	Image       []byte
	ContentType string
	Width       int
	Height      int
	ModelRev    string
	// PeakGPUMemoryBytes is the accelerator memory the job peaked at; zero
	// when the backend does not know it.
	PeakGPUMemoryBytes uint64
	// Backend names the backend that produced the image when it is not
	// the one called, as when a failing provider's fallback answered.
	Backend string
	// Warnings are short machine-readable notes for the client, such as
	// "mask_ignored".
	Warnings []string
	// Phases is the backend's own breakdown of the job's time, in the
	// order of its phases; nil when it gives none.
	Phases []Phase
	// BilledTime is the run time the backend reports it charges for (a
	// provider's prediction time); zero when it reports none, and the
	// time the sidecar saw counts instead.
	BilledTime time.Duration
	// Seed is the seed the image was made with when the backend says so
	// (the engine answers another one after a structure retry); nil means
	// the job's.
	Seed *uint32
	// Checks is what the engine's checks found; the zero value means that
	// none ran.
	Checks Checks
	// EngineTime is the engine's own time for the job, from the call's
	// arrival in its server to its result; zero from other backends. The
	// rest of the backend time is the call's transport.
	EngineTime time.Duration
}

// Checks are the engine's content policy and structure check of one job.
type Checks struct {
	// Content reports that the content policy looked at the photo; it
	// passed, or warned with "people_detected" (a refusal is the error
	// fault.ContentRejected instead).
	Content bool
	// Structure reports that the answered image has a StructureScore: the
	// share of the original's edges it keeps, outside the mask.
	Structure      bool
	StructureScore float64
	// Renders is how many images the engine rendered for the job: 1, or
	// more after structure retries; 0 when it did not say.
	Renders int
}

// Phase is one step of a backend's work and how long it took.
type Phase struct {
	// Name is one of telemetry.Phases.
	Name     string
	Duration time.Duration
}

// Backend produces staged images. Stage must return promptly after ctx is
// done, and return errors from the fault package so the client sees a
// stable code.
type Backend interface {
	// Name is the backend's name in answers, logs and metric labels.
	Name() string
	Stage(ctx context.Context, job Job) (Result, error)
}
