package backend

import (
	"context"
	"errors"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/mode"
)

// MockModelRev is the model_rev of every mock result.
const MockModelRev = "mock"

// Mock returns the original as the staged image: decoded, turned upright
// from its EXIF orientation, fitted within the output size and re-encoded as
// a JPEG without any metadata. It exercises the whole contract without a
// GPU.
type Mock struct {
	// MaxPixels caps decoding, as a second line behind the header check.
	MaxPixels int64
	// Quality is the JPEG quality of the output.
	Quality int
	// Budget bounds the pixels decoded at once across all jobs; nil bounds
	// nothing. Behind the kill switch every job comes here, so this is what
	// keeps a burst of huge inputs from taking the process's memory.
	Budget *imagecheck.Budget
}

// Name returns "mock".
func (m *Mock) Name() string { return string(mode.Mock) }

// Stage re-encodes the original, after waiting for its pixels to fit in the
// decode budget. A mask (which the caller has checked, as for any backend)
// is ignored, with the warning "mask_ignored", so callers can test
// inpainting requests end to end. An upscale is a resampling of the
// original to the final size (Catmull-Rom), with the warning
// WarningUpscaleResampled.
func (m *Mock) Stage(ctx context.Context, job Job) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	pixels := job.Info.Pixels()
	if up := int64(job.UpscaleLongSide); up > 0 {
		// The upscaled output, at most up×up, is decoded beside the input.
		pixels += up * up
	}
	release, err := m.Budget.Acquire(ctx, pixels)
	if err != nil {
		return Result{}, ctx.Err()
	}
	r, err := imagecheck.Normalize(job.Image, imagecheck.NormalizeOptions{
		MaxPixels:       m.MaxPixels,
		LongSide:        job.OutputLongSide,
		UpscaleLongSide: job.UpscaleLongSide,
		Quality:         m.Quality,
	})
	release()
	switch {
	case errors.Is(err, imagecheck.ErrTooManyPixels):
		return Result{}, fault.Wrap(err, fault.ImageTooLarge, "the original has too many pixels")
	case errors.Is(err, imagecheck.ErrUnsupported):
		return Result{}, fault.Wrap(err, fault.UnsupportedMediaType, "the original is not a JPEG, PNG or WebP image")
	case errors.Is(err, imagecheck.ErrCorrupt):
		return Result{}, fault.Wrap(err, fault.InvalidInput, "the original could not be decoded; it may be truncated or corrupt")
	case err != nil:
		return Result{}, fault.Wrap(err, fault.Internal, "re-encoding the original failed")
	}
	res := Result{Image: r.Data, ContentType: "image/jpeg", Width: r.Width, Height: r.Height, ModelRev: MockModelRev}
	if job.Mask != nil {
		res.Warnings = append(res.Warnings, "mask_ignored")
	}
	if job.UpscaleLongSide > 0 {
		res.Warnings = append(res.Warnings, WarningUpscaleResampled)
	}
	return res, nil
}
