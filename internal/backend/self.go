package backend

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vstage/vstage/internal/engine"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/mode"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// Engine is what Self needs from the engine supervisor
// (*engine.Supervisor implements it).
type Engine interface {
	// Stage runs one job; see engine.Supervisor.Stage for its errors.
	Stage(ctx context.Context, req *enginev1.StageRequest) (*enginev1.Result, error)
	// Info returns what the engine reported about itself, nil before it
	// was first ready.
	Info() *enginev1.InfoResponse
}

// SelfOptions configures Self. Zero values mean the defaults noted.
type SelfOptions struct {
	// Steps is the number of denoising steps [INFERENCE_STEPS]. Default 30.
	Steps int
	// Quality is the JPEG quality of the output, 1 to 100
	// [OUTPUT_JPEG_QUALITY]. Default 90.
	Quality int
	// ContentPolicy is what the engine does with a photo that shows
	// people [CONTENT_POLICY]; the zero value is off.
	ContentPolicy enginev1.ContentPolicy
	// StructureMin is the structure score below which a job gets the
	// warning structure_check_failed [QA_STRUCTURE_MIN], in [0, 1]; 0 is
	// off.
	StructureMin float64
	// StructureRetries is how many more seeds a job below StructureMin
	// tries [QA_RETRIES], at most 100; fewer when the engine allows fewer.
	StructureRetries int
}

// Self stages images with the engine the sidecar supervises.
type Self struct {
	engine Engine
	opts   SelfOptions
}

// NewSelf returns a Self backend on top of e.
func NewSelf(e Engine, opts SelfOptions) (*Self, error) {
	if opts.Steps == 0 {
		opts.Steps = 30
	}
	if opts.Quality == 0 {
		opts.Quality = 90
	}
	if opts.Steps < 1 || opts.Steps > 1000 {
		return nil, fmt.Errorf("backend: Steps must be in [1, 1000], got %d", opts.Steps)
	}
	if opts.Quality < 1 || opts.Quality > 100 {
		return nil, fmt.Errorf("backend: Quality must be in [1, 100], got %d", opts.Quality)
	}
	if !(opts.StructureMin >= 0 && opts.StructureMin <= 1) {
		return nil, fmt.Errorf("backend: StructureMin must be in [0, 1], got %v", opts.StructureMin)
	}
	if opts.StructureRetries < 0 || opts.StructureRetries > 100 {
		return nil, fmt.Errorf("backend: StructureRetries must be in [0, 100], got %d", opts.StructureRetries)
	}
	if _, ok := enginev1.ContentPolicy_name[int32(opts.ContentPolicy)]; !ok {
		return nil, fmt.Errorf("backend: unknown ContentPolicy %d", opts.ContentPolicy)
	}
	return &Self{engine: e, opts: opts}, nil
}

// Name returns "self".
func (s *Self) Name() string { return string(mode.Self) }

// Stage runs job on the engine. ctx's deadline and cancellation reach the
// engine, which stops the job at its next step. Errors are from the fault
// package, except that a job ended by ctx returns ctx's error.
func (s *Self) Stage(ctx context.Context, job Job) (Result, error) {
	req, err := s.request(job)
	if err != nil {
		return Result{}, err
	}
	res, err := s.engine.Stage(ctx, req)
	if err != nil {
		return Result{}, s.fault(ctx, err)
	}
	// The engine's seeds are 64-bit, but a job's never leaves 32 bits:
	// request caps the retries so that seed + retries fits.
	seed := uint32(res.GetSeed())
	return Result{
		Image:              res.GetImage(),
		ContentType:        "image/jpeg",
		Width:              int(res.GetWidth()),
		Height:             int(res.GetHeight()),
		ModelRev:           res.GetModelRev(),
		PeakGPUMemoryBytes: res.GetPeakGpuMemoryBytes(),
		Phases:             phases(res.GetTimings()),
		Warnings:           append([]string(nil), res.GetWarnings()...),
		Seed:               &seed,
		EngineTime:         msDuration(res.GetTimings().GetTotalMs()),
		Checks: Checks{
			Content:        s.policy() != enginev1.ContentPolicy_CONTENT_POLICY_OFF,
			Structure:      res.StructureScore != nil,
			StructureScore: float64(res.GetStructureScore()),
			Renders:        int(res.GetAttempts()),
		},
	}, nil
}

// policy is the content policy sent, with unspecified read as off.
func (s *Self) policy() enginev1.ContentPolicy {
	if s.opts.ContentPolicy == enginev1.ContentPolicy_CONTENT_POLICY_UNSPECIFIED {
		return enginev1.ContentPolicy_CONTENT_POLICY_OFF
	}
	return s.opts.ContentPolicy
}

// phases lists the engine's timings under the names of telemetry.Phases;
// nil when the engine sent none.
func phases(t *enginev1.Timings) []Phase {
	if t == nil {
		return nil
	}
	ms := msDuration
	out := []Phase{
		{"decode", ms(t.GetDecodeMs())},
		{"preprocess", ms(t.GetPreprocessMs())},
	}
	// A check that did not run is no phase, and only upscaled jobs have the
	// upscale phase; a zero would drag their histograms towards nothing.
	if v := t.GetContentCheckMs(); v > 0 {
		out = append(out, Phase{"content_check", ms(v)})
	}
	out = append(out, Phase{"denoise", ms(t.GetDenoiseMs())}, Phase{"vae_decode", ms(t.GetVaeDecodeMs())})
	if v := t.GetStructureCheckMs(); v > 0 {
		out = append(out, Phase{"structure_check", ms(v)})
	}
	if v := t.GetUpscaleMs(); v > 0 {
		out = append(out, Phase{"upscale", ms(v)})
	}
	return append(out, Phase{"encode", ms(t.GetEncodeMs())})
}

// msDuration is v milliseconds.
func msDuration(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func (s *Self) request(job Job) (*enginev1.StageRequest, error) {
	up, err := s.upscaleLongSide(job.UpscaleLongSide)
	if err != nil {
		return nil, err
	}
	return &enginev1.StageRequest{
		JobId:             job.ID,
		Image:             job.Image,
		Mask:              job.Mask,
		Prompt:            job.Prompt,
		NegativePrompt:    job.NegativePrompt,
		Seed:              uint64(job.Seed),
		Strength:          float32(job.Strength),
		GuidanceScale:     float32(job.GuidanceScale),
		Steps:             uint32(s.opts.Steps),
		Control:           enginev1.ControlKind_CONTROL_KIND_CANNY,
		ConditioningScale: float32(job.ControlNetConditioningScale),
		OutputLongSide:    s.longSide(job.OutputLongSide),
		OutputFormat:      enginev1.ImageFormat_IMAGE_FORMAT_JPEG,
		Quality:           uint32(s.opts.Quality),
		ContentPolicy:     s.policy(),
		StructureMin:      float32(s.opts.StructureMin),
		StructureRetries:  s.retries(job.Seed),
		UpscaleLongSide:   up,
	}, nil
}

// upscaleLongSide checks an upscale against the engine's limit when it is
// known. An engine that cannot upscale, or not that far, is a configuration
// that disagrees with UPSCALE_LONG_SIDE: the job fails with internal
// rather than come back smaller than it was promised.
func (s *Self) upscaleLongSide(n int) (uint32, error) {
	if n <= 0 {
		return 0, nil
	}
	v := uint32(n) &^ 7
	info := s.engine.Info()
	if info == nil || info.GetLimits() == nil {
		return v, nil
	}
	switch hi := info.GetLimits().GetMaxUpscaleLongSide(); {
	case hi == 0:
		return 0, fault.New(fault.Internal, "upscaling is enabled, but the staging engine cannot upscale (ENGINE_MAX_UPSCALE_LONG_SIDE is 0)")
	case v > hi:
		return 0, fault.New(fault.Internal, "upscaling to %d px is configured, but the staging engine upscales to at most %d px", v, hi)
	}
	return v, nil
}

// retries is the structure retries a job with seed may ask for: the
// configured number, within the engine's limit when it is known, and never
// so many that a retry's seed (seed + n) would leave 32 bits, which the
// answer's seed could not hold.
func (s *Self) retries(seed uint32) uint32 {
	if s.opts.StructureMin <= 0 {
		return 0
	}
	n := uint32(s.opts.StructureRetries)
	if info := s.engine.Info(); info != nil && info.GetLimits() != nil {
		n = min(n, info.GetLimits().GetMaxStructureRetries())
	}
	return min(n, math.MaxUint32-seed)
}

// longSide rounds n down to a multiple of 8, as the engine requires, and
// clamps it to the engine's limits when they are known; 0 (or less) asks
// for the engine's default.
func (s *Self) longSide(n int) uint32 {
	if n <= 0 {
		return 0
	}
	v := uint32(n) &^ 7
	if info := s.engine.Info(); info != nil && info.GetLimits() != nil {
		l := info.GetLimits()
		if lo := l.GetMinLongSide(); lo > 0 && v < lo {
			v = lo
		}
		if hi := l.GetMaxLongSide(); hi > 0 && v > hi {
			v = hi
		}
	}
	return v
}

// fault maps an error of Engine.Stage to the error model.
func (s *Self) fault(ctx context.Context, err error) error {
	if errors.Is(err, engine.ErrUnavailable) {
		return fault.Wrap(err, fault.Unavailable, "the staging engine is starting or restarting; retry shortly")
	}
	code := status.Code(err)
	reason := engine.Reason(err)
	// A cancellation or deadline of our own: the caller decides what the
	// client sees, from ctx.
	if ctx.Err() != nil && reason == enginev1.FailureReason_FAILURE_REASON_UNSPECIFIED {
		return fmt.Errorf("backend: self: %w", ctx.Err())
	}
	msg := "the engine failed"
	if st, ok := status.FromError(err); ok && st.Message() != "" {
		msg = st.Message()
	}
	switch code {
	case codes.FailedPrecondition:
		if reason == enginev1.FailureReason_FAILURE_REASON_CONTENT_REJECTED {
			return fault.Wrap(err, fault.ContentRejected,
				"the photo shows people (a face or a person), and the content policy refuses such photos; send a photo of the empty room")
		}
	case codes.InvalidArgument:
		if reason == enginev1.FailureReason_FAILURE_REASON_IMAGE_TOO_LARGE {
			return fault.Wrap(err, fault.ImageTooLarge, "%s", msg)
		}
		return fault.Wrap(err, fault.InvalidInput, "the engine rejected the job (%s): %s", reasonText(reason), msg)
	case codes.ResourceExhausted:
		if reason == enginev1.FailureReason_FAILURE_REASON_OOM {
			return fault.Wrap(err, fault.OOM, "the GPU ran out of memory; retry, or ask for a smaller output")
		}
	case codes.DeadlineExceeded:
		return fault.Wrap(err, fault.Timeout, "the engine did not finish in time")
	case codes.Unavailable, codes.Canceled:
		// A cancellation that is not ours is the connection closing under
		// the call: the engine is going away.
		return fault.Wrap(err, fault.Unavailable, "the staging engine is not available; retry shortly")
	}
	return fault.Wrap(err, fault.Internal, "the engine failed to stage the image")
}

// reasonText is a failure reason as clients read it in messages: the enum
// value's name without its prefix, in lower case ("out_of_range").
func reasonText(r enginev1.FailureReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "FAILURE_REASON_"))
}
