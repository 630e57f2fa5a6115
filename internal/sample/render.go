package sample

import (
	"image"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
)

// The room, in metres: x to the right, y up, z away from the camera. The
// floor is y = 0, the back wall z = depth, the side walls x = ±width/2.
const (
	roomWidth  = 5.2
	roomHeight = 2.7
	roomDepth  = 6.2
	roomFront  = -0.5
	wallThick  = 0.22 // depth of the window reveal
	glassInset = 0.14 // glass plane behind the inner face of the back wall
	skirting   = 0.10
)

// rect is an axis-aligned rectangle in the plane of a wall.
type rect struct{ a0, a1, b0, b1 float64 }

func (r rect) contains(a, b float64) bool { return a >= r.a0 && a <= r.a1 && b >= r.b0 && b <= r.b1 }

type scene struct {
	cam      vec
	focal    float64 // pixels
	cx, cy   float64
	window   rect // on the back wall: a = x, b = y
	door     rect // on the right wall: a = z, b = y
	hallEnd  float64
	sun      vec // towards the sun
	floor    *floor
	wallTex  *noise
	sky      *noise
	winLight vec // radiance of the window seen from inside
	sunLight vec
	bounce   vec // where sunlight reflected by the floor seems to come from
	bouncePw vec // and how strong it is
	crowns   []crown
}

// crown is the round top of a tree seen through the window.
type crown struct{ x, y, r float64 }

// Seed fixes the random choices of the picture, so that every render is the
// same down to the byte.
const seed = 20260611

func newScene(w, h int) *scene {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	hfov := 78.0 * math.Pi / 180
	s := &scene{
		cam:      vec{-0.25, 1.32, 0},
		focal:    float64(w) / 2 / math.Tan(hfov/2),
		cx:       float64(w) / 2,
		cy:       float64(h) / 2,
		window:   rect{-1.55, 1.35, 0.42, 2.36},
		door:     rect{3.9, 4.82, 0, 2.08},
		hallEnd:  roomWidth/2 + wallThick + 1.25,
		sun:      vec{0.22, 0.58, 0.78}.norm(),
		floor:    newFloor(r, -roomWidth/2, 0.19, 64),
		wallTex:  newNoise(r),
		sky:      newNoise(r),
		winLight: srgb(255, 250, 242),
		sunLight: srgb(255, 238, 212).mul(1.5),
	}
	for x := -45.0; x < 45; x += 2.5 + r.Float64()*3.5 {
		rad := 1.4 + r.Float64()*1.8
		s.crowns = append(s.crowns, crown{x: x, y: 1.7 + rad + r.Float64()*1.8, r: rad})
	}
	// Treat the sun patch as one source of reflected light at its centre:
	// the window's centre projected along the sun onto the floor.
	win := s.window
	c := vec{(win.a0 + win.a1) / 2, (win.b0 + win.b1) / 2, roomDepth}
	s.bounce = c.sub(s.sun.mul(c.y / s.sun.y))
	area := (win.a1 - win.a0) * (win.b1 - win.b0) * s.sun.z / s.sun.y
	s.bouncePw = s.sunLight.hadamard(oakLight).mul(s.sun.y * area * 0.5)
	return s
}

// Render draws an empty living room, w×h pixels, in one-point perspective:
// a light oak floor, off-white walls with skirting boards, a large window in
// the back wall with sunlight falling through it onto the floor, and a
// doorway on the right. The same size always gives the same pixels.
func Render(w, h int) *image.RGBA {
	s := newScene(w, h)
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	// Nine samples per pixel keep the straight edges clean.
	const n = 3
	// A sheared grid: every sample has its own column and row, which
	// smooths near-horizontal and near-vertical edges alike.
	var offsets [n * n][2]float64
	for i := range n {
		for j := range n {
			offsets[i*n+j] = [2]float64{
				(float64(i) + (float64(j)+0.5)/n) / n,
				(float64(j) + (float64(i)+0.5)/n) / n,
			}
		}
	}
	rows := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for y := range rows {
				for x := range w {
					var sum vec
					for _, o := range offsets {
						sum = sum.add(s.pixel(float64(x)+o[0], float64(y)+o[1], n))
					}
					c := sum.mul(1.0 / float64(len(offsets)))
					i := m.PixOffset(x, y)
					m.Pix[i+0] = toSRGB(c.x)
					m.Pix[i+1] = toSRGB(c.y)
					m.Pix[i+2] = toSRGB(c.z)
					m.Pix[i+3] = 255
				}
			}
		})
	}
	for y := range h {
		rows <- y
	}
	close(rows)
	wg.Wait()
	return m
}

// toSRGB tone-maps a linear radiance with a soft shoulder, so the window
// glows rather than clips hard, and encodes it as sRGB.
func toSRGB(v float64) uint8 {
	const white = 2.4
	v = math.Max(v, 0)
	v = v * (1 + v/(white*white)) / (1 + v)
	if v <= 0.0031308 {
		v *= 12.92
	} else {
		v = 1.055*math.Pow(v, 1/2.4) - 0.055
	}
	return uint8(math.Round(clamp01(v) * 255))
}

const exposure = 3.0

func (s *scene) pixel(px, py float64, ss int) vec {
	d := vec{(px - s.cx) / s.focal, -(py - s.cy) / s.focal, 1}.norm()
	// The size of one sample, as an angle; times distance it is the size of
	// the patch of surface the sample sees.
	ang := 1 / (s.focal * float64(ss))
	return s.trace(s.cam, d, ang).mul(exposure)
}

// exit returns the distance along d from o, inside the box [lo, hi], to the
// face where the ray leaves it, and which axis (0 x, 1 y, 2 z) that face is
// on.
func exit(o, d, lo, hi vec) (float64, int) {
	t, axis := math.Inf(1), -1
	try := func(od, dd, l, h float64, a int) {
		var tt float64
		switch {
		case dd > 0:
			tt = (h - od) / dd
		case dd < 0:
			tt = (l - od) / dd
		default:
			return
		}
		if tt < t {
			t, axis = tt, a
		}
	}
	try(o.x, d.x, lo.x, hi.x, 0)
	try(o.y, d.y, lo.y, hi.y, 1)
	try(o.z, d.z, lo.z, hi.z, 2)
	return t, axis
}

// enter returns the distance along d from o outside the box [lo, hi] to
// where the ray meets it, and the outward normal of the face it meets.
func enter(o, d, lo, hi vec) (float64, vec, bool) {
	tmin, tmax := math.Inf(-1), math.Inf(1)
	var n vec
	slab := func(od, dd, l, h float64, axis vec) {
		if dd == 0 {
			if od < l || od > h {
				tmax = math.Inf(-1)
			}
			return
		}
		t0, t1 := (l-od)/dd, (h-od)/dd
		face := axis.mul(-1)
		if t0 > t1 {
			t0, t1, face = t1, t0, axis
		}
		if t0 > tmin {
			tmin, n = t0, face
		}
		tmax = math.Min(tmax, t1)
	}
	slab(o.x, d.x, lo.x, hi.x, vec{1, 0, 0})
	slab(o.y, d.y, lo.y, hi.y, vec{0, 1, 0})
	slab(o.z, d.z, lo.z, hi.z, vec{0, 0, 1})
	return tmin, n, tmin <= tmax && tmin > 0
}

// The window board: a painted ledge under the window, standing out from
// the back wall.
const (
	sillDepth = 0.045
	sillThick = 0.03
	sillEars  = 0.06 // how far it runs past the opening on each side
)

func (s *scene) hitSill(o, d vec) (float64, vec, bool) {
	w := s.window
	lo := vec{w.a0 - sillEars, w.b0 - sillThick, roomDepth - sillDepth}
	hi := vec{w.a1 + sillEars, w.b0, roomDepth}
	return enter(o, d, lo, hi)
}

func (s *scene) trace(o, d vec, ang float64) vec {
	lo := vec{-roomWidth / 2, 0, roomFront}
	hi := vec{roomWidth / 2, roomHeight, roomDepth}
	t, axis := exit(o, d, lo, hi)
	if ts, n, ok := s.hitSill(o, d); ok && ts < t {
		return s.shadeSill(o.add(d.mul(ts)), n)
	}
	p := o.add(d.mul(t))
	fp := t * ang
	switch axis {
	case 1:
		if d.y < 0 {
			return s.shadeFloor(p, d, fp)
		}
		return s.shadeCeiling(p, fp)
	case 0:
		if d.x > 0 && s.door.contains(p.z, p.y) {
			return s.traceDoor(p, d, t, ang)
		}
		n := vec{1, 0, 0}
		if d.x > 0 {
			n = vec{-1, 0, 0}
		}
		return s.shadeWall(p, n, p.z, fp, s.door, d.x > 0)
	default:
		if s.window.contains(p.x, p.y) {
			return s.traceWindow(p, d, fp, ang, t)
		}
		return s.shadeWall(p, vec{0, 0, -1}, p.x, fp, s.window, false)
	}
}
