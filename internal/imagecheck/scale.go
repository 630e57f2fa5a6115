package imagecheck

import (
	"image"
	"image/color"
	"math"

	"golang.org/x/image/draw"
)

// scaleDown draws src, composited with op onto white, into dst with a
// Catmull-Rom filter widened by the reduction factor (so that a large
// reduction averages every source pixel instead of skipping most of them).
// A dst larger than src is interpolated with the plain filter.
//
// It reads src one row at a time and keeps only a window of filtered rows,
// so beside src and dst it needs a few hundred kilobytes whatever the sizes.
// x/image/draw's Scale instead holds a float64 RGBA buffer of dst's width by
// src's height: 32 bytes a pixel, close to 200 MB for a 6000x6000 input.
func scaleDown(dst *image.RGBA, src image.Image, op draw.Op) {
	sb, db := src.Bounds(), dst.Bounds()
	sw, sh, dw, dh := sb.Dx(), sb.Dy(), db.Dx(), db.Dy()
	cols, rows := filterTaps(sw, dw), filterTaps(sh, dh)

	// row holds one source row, composited onto white, as 8-bit RGBA.
	row := image.NewRGBA(image.Rect(0, 0, sw, 1))
	white := image.NewUniform(color.White)
	// window keeps the horizontally filtered source rows that the output
	// rows still need, indexed by source row modulo its length.
	window := make([][]float32, rows.maxTaps+1)
	for i := range window {
		window[i] = make([]float32, dw*4)
	}
	next := 0 // the next source row to filter
	for dy := range dh {
		taps := rows.taps[dy]
		for ; next <= taps.last(); next++ {
			if op == draw.Over {
				draw.Draw(row, row.Rect, white, image.Point{}, draw.Src)
			}
			draw.Draw(row, row.Rect, src, image.Pt(sb.Min.X, sb.Min.Y+next), op)
			filterRow(window[next%len(window)], row.Pix, cols)
		}
		out := dst.Pix[(db.Min.Y-dst.Rect.Min.Y+dy)*dst.Stride+(db.Min.X-dst.Rect.Min.X)*4:]
		for i := range dw * 4 {
			var v float32
			for k, w := range taps.weights {
				v += w * window[(taps.first+k)%len(window)][i]
			}
			out[i] = clamp8(v)
		}
	}
}

// filterRow filters one 8-bit RGBA source row into out (dst width × 4).
func filterRow(out []float32, pix []uint8, cols filter) {
	for dx, t := range cols.taps {
		var r, g, b, a float32
		p := pix[t.first*4:]
		for k, w := range t.weights {
			r += w * float32(p[k*4])
			g += w * float32(p[k*4+1])
			b += w * float32(p[k*4+2])
			a += w * float32(p[k*4+3])
		}
		out[dx*4], out[dx*4+1], out[dx*4+2], out[dx*4+3] = r, g, b, a
	}
}

func clamp8(v float32) uint8 {
	switch {
	case v <= 0:
		return 0
	case v >= 255:
		return 255
	}
	return uint8(v + 0.5)
}

// taps are the source samples one output sample is made of: weights for
// first, first+1, ..., summing to 1.
type taps struct {
	first   int
	weights []float32
}

func (t taps) last() int { return t.first + len(t.weights) - 1 }

type filter struct {
	taps    []taps
	maxTaps int
}

// filterTaps computes, for each of the n output samples along an axis of
// src source samples, the Catmull-Rom taps, the kernel stretched by the
// reduction factor; samples past the edges are left out and the rest
// renormalised.
func filterTaps(src, n int) filter {
	scale := float64(src) / float64(n)
	stretch := math.Max(scale, 1)
	radius := 2 * stretch
	f := filter{taps: make([]taps, n)}
	for i := range n {
		center := (float64(i)+0.5)*scale - 0.5
		lo := max(0, int(math.Ceil(center-radius)))
		hi := min(src-1, int(math.Floor(center+radius)))
		w := make([]float32, 0, hi-lo+1)
		var sum float64
		for j := lo; j <= hi; j++ {
			v := catmullRom((float64(j) - center) / stretch)
			w = append(w, float32(v))
			sum += v
		}
		for k := range w {
			w[k] = float32(float64(w[k]) / sum)
		}
		f.taps[i] = taps{first: lo, weights: w}
		f.maxTaps = max(f.maxTaps, len(w))
	}
	return f
}

func catmullRom(x float64) float64 {
	x = math.Abs(x)
	switch {
	case x < 1:
		return (1.5*x-2.5)*x*x + 1
	case x < 2:
		return ((-0.5*x+2.5)*x-4)*x + 2
	}
	return 0
}
