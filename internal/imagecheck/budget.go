package imagecheck

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// giveBackEvery bounds how often release hands memory back to the system:
// each time is a full collection on the releasing request's goroutine, so
// steady traffic of large photos pays for it once per period, not per job.
const giveBackEvery = 10 * time.Second

// Budget bounds the pixels being decoded at once, and so the memory that
// decoding takes: a decoded pixel costs 1 to 8 bytes (8 for 16-bit PNGs and
// for progressive JPEGs, whose coefficients are held whole), so a budget of
// n pixels keeps decoded images under 8n bytes however many requests
// arrive. Callers wait their turn in arrival order.
//
// A nil *Budget bounds nothing.
type Budget struct {
	sem    *semaphore.Weighted
	pixels int64

	mu       sync.Mutex
	inUse    int64
	peaked   bool // a large decode ran since memory was last given back
	lastGave time.Time
	// giveBack returns freed memory to the system (debug.FreeOSMemory).
	giveBack func()
}

// NewBudget returns a budget of pixels, which must be positive.
func NewBudget(pixels int64) *Budget {
	return &Budget{sem: semaphore.NewWeighted(pixels), pixels: pixels, giveBack: debug.FreeOSMemory}
}

// Acquire waits until pixels fit in the budget, or ctx is done. An image
// larger than the whole budget waits for all of it, and so decodes alone.
// release gives the pixels back; it must be called exactly once.
//
// When the last decode in flight ends and one of those since memory was
// last given back took a quarter of the budget or more, release hands the
// freed memory back to the operating system (at most once every
// giveBackEvery), so a burst of huge inputs does not leave the process at
// its peak size.
func (b *Budget) Acquire(ctx context.Context, pixels int64) (release func(), err error) {
	if b == nil {
		return func() {}, nil
	}
	n := min(max(pixels, 1), b.pixels)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, fmt.Errorf("imagecheck: waiting for %d pixels of decode budget: %w", n, err)
	}
	b.mu.Lock()
	b.inUse += n
	b.peaked = b.peaked || n >= b.pixels/4
	b.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { b.release(n) }) }, nil
}

func (b *Budget) release(n int64) {
	b.mu.Lock()
	b.inUse -= n
	now := time.Now()
	giveBack := b.inUse == 0 && b.peaked && now.Sub(b.lastGave) >= giveBackEvery
	if giveBack {
		b.peaked, b.lastGave = false, now
	}
	b.mu.Unlock()
	b.sem.Release(n)
	if giveBack {
		// The Go runtime returns freed memory to the system only slowly;
		// after a decode of this size, waiting leaves hundreds of
		// megabytes resident for minutes.
		b.giveBack()
	}
}
