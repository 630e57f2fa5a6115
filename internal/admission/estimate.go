package admission

import (
	"time"

	"github.com/vstage/vstage/internal/telemetry"
)

// sizeBucket is the size class of a job of mp megapixels
// (telemetry.SizeBucket, which the metrics' size label also names).
func sizeBucket(mp float64) int {
	return telemetry.SizeBucket(mp * 1e6)
}

// sizeLabel is the size label of a job of mp megapixels.
func sizeLabel(mp float64) string {
	return telemetry.SizeLabel(mp * 1e6)
}

// durationAlpha weighs a new measurement in the per-megapixel duration
// average: recent enough to follow a slower model or a hotter GPU within a
// few jobs, smooth enough that one odd job does not swing Retry-After.
const durationAlpha = 0.2

// estimator learns how long a megapixel takes and how much accelerator
// memory a job of each size peaks at. It is guarded by the Controller's
// mutex.
//
// A megapixel does not cost the same in every size class: an upscaled job
// renders a smaller image and refines the rest at a low strength, so its
// seconds per final megapixel are well below a plain job's. Each class
// keeps its own average, and a class with none yet borrows the overall one.
type estimator struct {
	perMP    float64 // seconds per megapixel, over all sizes
	measured bool
	perMPOf  [telemetry.MaxSizeBucket + 1]float64 // per size class, 0 = none yet

	vramBase, vramPerMP uint64
	vram                [telemetry.MaxSizeBucket + 1]uint64 // learned peaks, 0 = none yet
}

// Caps that keep absurd sizes from overflowing the sums of a few jobs.
const (
	maxDuration = float64(100 * 24 * time.Hour)
	maxNeed     = float64(1 << 56)
)

// duration is the expected time of a job of mp megapixels.
func (e *estimator) duration(mp float64) time.Duration {
	perMP := e.perMP
	if v := e.perMPOf[sizeBucket(mp)]; v > 0 {
		perMP = v
	}
	return time.Duration(min(mp*perMP*float64(time.Second), maxDuration))
}

// observeDuration folds in a finished job. The first measurement replaces
// the seed, which is a guess; a class's first replaces the overall average
// it borrowed.
func (e *estimator) observeDuration(mp float64, d time.Duration) {
	v := d.Seconds() / mp
	b := sizeBucket(mp)
	if cur := e.perMPOf[b]; cur > 0 {
		e.perMPOf[b] = cur + durationAlpha*(v-cur)
	} else {
		e.perMPOf[b] = v
	}
	if !e.measured {
		e.perMP, e.measured = v, true
		return
	}
	e.perMP += durationAlpha * (v - e.perMP)
}

// need is the memory a job of mp megapixels is expected to peak at: the
// learned peak of its size, or the seed until one is known.
func (e *estimator) need(mp float64) uint64 {
	if v := e.vram[sizeBucket(mp)]; v > 0 {
		return v
	}
	return uint64(min(float64(e.vramBase)+mp*float64(e.vramPerMP), maxNeed))
}

// observePeak folds in a job's peak and returns the new estimate of its
// size. A larger peak is taken at once; a smaller one pulls the estimate
// down by an eighth of the gap, so that one light job does not invite an
// out-of-memory error on the next heavy one. The first peak of a size
// replaces the seed.
func (e *estimator) observePeak(mp float64, peak uint64) uint64 {
	b := sizeBucket(mp)
	cur := e.vram[b]
	switch {
	case cur == 0 || peak >= cur:
		cur = peak
	default:
		cur -= (cur - peak) / 8
	}
	e.vram[b] = cur
	return cur
}
