package imagecheck

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"

	"golang.org/x/sync/semaphore"
)

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

	mu     sync.Mutex
	inUse  int64
	peaked bool // a large decode ran since memory was last given back
}

// NewBudget returns a budget of pixels, which must be positive.
func NewBudget(pixels int64) *Budget {
	return &Budget{sem: semaphore.NewWeighted(pixels), pixels: pixels}
}

// Pixels returns the size of the budget.
func (b *Budget) Pixels() int64 { return b.pixels }

// Acquire waits until pixels fit in the budget, or ctx is done. An image
// larger than the whole budget waits for all of it, and so decodes alone.
// release gives the pixels back; it must be called exactly once.
//
// When the last decode in flight ends and one of those since the budget was
// last idle took a quarter of it or more, release hands the freed memory
// back to the operating system, so a burst of huge inputs does not leave
// the process at its peak size.
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
	giveBack := b.inUse == 0 && b.peaked
	if giveBack {
		b.peaked = false
	}
	b.mu.Unlock()
	b.sem.Release(n)
	if giveBack {
		// The Go runtime returns freed memory to the system only slowly;
		// after a decode of this size, waiting leaves hundreds of
		// megabytes resident for minutes.
		debug.FreeOSMemory()
	}
}
