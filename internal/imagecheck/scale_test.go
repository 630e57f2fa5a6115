package imagecheck

import (
	"context"
	"image"
	"image/color"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/image/draw"
)

func gradient(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.SetRGBA(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x ^ y) & 0xFF), 255})
		}
	}
	return m
}

// TestScaleDownMatchesCatmullRom compares the row-at-a-time scaler with
// x/image/draw's Catmull-Rom on pictures with smooth and sharp detail: the
// two differ by rounding and edge handling only.
func TestScaleDownMatchesCatmullRom(t *testing.T) {
	for _, tc := range []struct{ sw, sh, dw, dh int }{
		{640, 480, 320, 240}, {640, 480, 200, 150}, {333, 777, 100, 233}, {300, 200, 299, 199}, {1000, 10, 100, 1},
	} {
		src := gradient(tc.sw, tc.sh)
		got := image.NewRGBA(image.Rect(0, 0, tc.dw, tc.dh))
		scaleDown(got, src, draw.Src)
		want := image.NewRGBA(got.Rect)
		draw.CatmullRom.Scale(want, want.Rect, src, src.Rect, draw.Src, nil)
		var sum float64
		for i := range got.Pix {
			sum += math.Abs(float64(got.Pix[i]) - float64(want.Pix[i]))
		}
		if mean := sum / float64(len(got.Pix)); mean > 1.5 {
			t.Errorf("%dx%d to %dx%d: mean difference %.2f levels from Catmull-Rom", tc.sw, tc.sh, tc.dw, tc.dh, mean)
		}
	}
}

// TestScaleDownFlattensOntoWhite scales a transparent picture: it comes out
// white, as the same-size path gives it.
func TestScaleDownFlattensOntoWhite(t *testing.T) {
	src := image.NewNRGBA(image.Rect(0, 0, 400, 300))
	got := image.NewRGBA(image.Rect(0, 0, 100, 75))
	scaleDown(got, src, draw.Over)
	for i, v := range got.Pix {
		if v != 255 {
			t.Fatalf("byte %d is %d, want 255 (white, opaque)", i, v)
		}
	}
}

// TestNormalizeMemoryIsTheDecodedImage checks that scaling a large input
// down costs little beside the decoded image itself: the work space used to
// be the output's width by the input's height in float64 RGBA.
func TestNormalizeMemoryIsTheDecodedImage(t *testing.T) {
	const side = 3000
	data := encodePNG(t, image.NewGray(image.Rect(0, 0, side, side))) // decodes to 9 MB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := Normalize(data, NormalizeOptions{LongSide: 1024}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	decoded, output := uint64(side*side), uint64(1024*1024*4)
	// The old scaler alone took 1024 x 3000 x 32 bytes, 98 MB.
	if got, limit := after.TotalAlloc-before.TotalAlloc, decoded+3*output+8<<20; got > limit {
		t.Errorf("Normalize allocated %d MB, want under %d MB", got>>20, limit>>20)
	}
}

func TestBudgetBoundsPixelsInFlight(t *testing.T) {
	b := NewBudget(100)
	var inUse, peak atomic.Int64
	var wg sync.WaitGroup
	for _, n := range []int64{60, 60, 30, 30, 30, 100, 5000, 1} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := b.Acquire(context.Background(), n)
			if err != nil {
				t.Error(err)
				return
			}
			held := min(n, 100)
			now := inUse.Add(held)
			for {
				p := peak.Load()
				if now <= p || peak.CompareAndSwap(p, now) {
					break
				}
			}
			runtime.Gosched()
			inUse.Add(-held)
			release()
			release() // a second call does nothing
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 100 || p == 0 {
		t.Errorf("peak pixels in flight %d, want 1..100", p)
	}
}

func TestBudgetWaitsForRelease(t *testing.T) {
	b := NewBudget(100)
	first, err := b.Acquire(context.Background(), 80)
	if err != nil {
		t.Fatal(err)
	}
	var released atomic.Bool
	done := make(chan bool)
	go func() {
		release, err := b.Acquire(context.Background(), 50)
		if err == nil {
			release()
		}
		done <- err == nil && released.Load()
	}()
	released.Store(true)
	first()
	if ok := <-done; !ok {
		t.Error("the second decode started before the first gave its pixels back")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	hold, _ := b.Acquire(context.Background(), 100)
	if _, err := b.Acquire(ctx, 1); err == nil {
		t.Error("Acquire succeeded with a full budget and a cancelled context")
	}
	hold()
	var none *Budget
	release, err := none.Acquire(ctx, 1<<40)
	if err != nil {
		t.Errorf("a nil budget refused: %v", err)
	}
	release()
}
