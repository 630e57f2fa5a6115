package sample

import (
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
)

// Depths of the wall around an opening, in metres.
const (
	wallThick  = 0.22 // depth of the window reveal and the door lining
	glassInset = 0.14 // glass plane behind the inner face of the wall
	skirting   = 0.10
)

// rect is an axis-aligned rectangle in the plane of a wall.
type rect struct{ a0, a1, b0, b1 float64 }

func (r rect) contains(a, b float64) bool { return a >= r.a0 && a <= r.a1 && b >= r.b0 && b <= r.b1 }

// scene is a Room made ready for tracing: lengths as vectors, colours as
// linear light, random choices drawn.
type scene struct {
	room     Room
	w, d, h  float64 // width, depth, height
	cam      vec
	turned   bool // the camera is yawed, pitched or rolled
	right    vec  // the camera's axes in the room, when turned
	up       vec
	fwd      vec
	focal    float64 // pixels
	cx, cy   float64
	windows  []opening
	door     *opening // rect a = z, b = y
	hallEnd  float64
	slope    *slopePlane
	sun      vec // towards the sun
	floor    *floor
	wallTex  *noise
	sky      *noise
	ambient  vec
	winLight vec // radiance of a window seen from inside
	sunLight vec
	view     float64
	bounces  []bounce
	crowns   []crown
}

// crown is the round top of a tree seen through a window.
type crown struct{ x, y, r float64 }

// bounce is sunlight reflected by the floor, treated as one source at the
// centre of a sun patch.
type bounce struct{ at, power vec }

func newScene(room Room, w, h int) *scene {
	r := rand.New(rand.NewPCG(room.Seed, room.Seed^0x9e3779b97f4a7c15))
	l := room.Light
	s := &scene{
		room:     room,
		w:        room.Width,
		d:        room.Depth,
		h:        room.Height,
		cam:      vec{room.Camera.X, room.Camera.Y, room.Camera.Z},
		focal:    float64(w) / 2 / math.Tan(radians(room.Camera.FOV)/2),
		cx:       float64(w) / 2,
		cy:       float64(h) / 2,
		hallEnd:  room.Width/2 + wallThick + 1.25,
		sun:      vec{l.Sun[0], l.Sun[1], l.Sun[2]}.norm(),
		floor:    newFloor(r, -room.Width/2, 0.19, 64),
		wallTex:  newNoise(r),
		sky:      newNoise(r),
		ambient:  ambientLight.mul(l.Ambient),
		winLight: srgb(l.Sky[0], l.Sky[1], l.Sky[2]).mul(l.SkyPower),
		sunLight: srgb(l.SunColor[0], l.SunColor[1], l.SunColor[2]).mul(l.SunPower),
		view:     l.View,
	}
	s.aim(room.Camera)
	for x := -45.0; x < 45; x += 2.5 + r.Float64()*3.5 {
		rad := 1.4 + r.Float64()*1.8
		s.crowns = append(s.crowns, crown{x: x, y: 1.7 + rad + r.Float64()*1.8, r: rad})
	}
	for _, win := range room.Windows {
		o := s.newOpening(win.Wall, rect{win.From, win.To, win.Sill, win.Top})
		s.windows = append(s.windows, o)
		if b, ok := s.sunPatch(&o); ok {
			s.bounces = append(s.bounces, b)
		}
	}
	if dr := room.Door; dr != nil {
		o := s.newOpening(dr.Wall, rect{dr.From, dr.To, 0, dr.Height})
		s.door = &o
	}
	if sl := room.Slope; sl != nil {
		s.slope = newSlopePlane(room, *sl)
	}
	return s
}

// radians converts degrees. Dividing first gives the demo's 78° the same
// bits as the constant expression it once was, which keeps the demo photo
// identical to the byte.
func radians(deg float64) float64 { return deg / 180 * math.Pi }

// aim sets the camera's axes: roll about the view axis, then pitch, then
// yaw.
func (s *scene) aim(c Camera) {
	if c.Yaw == 0 && c.Pitch == 0 && c.Roll == 0 {
		return
	}
	s.turned = true
	sy, cy := math.Sincos(radians(c.Yaw))
	sp, cp := math.Sincos(radians(c.Pitch))
	sr, cr := math.Sincos(radians(-c.Roll))
	rot := func(v vec) vec {
		v = vec{v.x*cr - v.y*sr, v.x*sr + v.y*cr, v.z}
		v = vec{v.x, v.y*cp + v.z*sp, -v.y*sp + v.z*cp}
		return vec{v.x*cy + v.z*sy, v.y, -v.x*sy + v.z*cy}
	}
	s.right, s.up, s.fwd = rot(vec{1, 0, 0}), rot(vec{0, 1, 0}), rot(vec{0, 0, 1})
}

// Render draws the demo's empty living room, w×h pixels, in one-point
// perspective: a light oak floor, off-white walls with skirting boards, a
// large window in the back wall with sunlight falling through it onto the
// floor, and a doorway on the right. The same size always gives the same
// pixels.
func Render(w, h int) *image.RGBA {
	m, err := RenderRoom(DemoRoom(), w, h)
	if err != nil {
		panic(fmt.Sprintf("sample: the demo room is invalid: %v", err))
	}
	return m
}

// RenderRoom draws room, w×h pixels, using every CPU. The same room and
// size always give the same pixels.
func RenderRoom(room Room, w, h int) (*image.RGBA, error) {
	if err := check(room, w, h); err != nil {
		return nil, err
	}
	s := newScene(room, w, h)
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	rows := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for y := range rows {
				for x := range w {
					c := s.colour(x, y)
					copy(m.Pix[m.PixOffset(x, y):], c[:])
				}
			}
		})
	}
	for y := range h {
		rows <- y
	}
	close(rows)
	wg.Wait()
	return m, nil
}

func check(room Room, w, h int) error {
	if w < 1 || h < 1 {
		return fmt.Errorf("size %dx%d: both sides must be positive", w, h)
	}
	return room.Validate()
}

// Nine samples per pixel keep the straight edges clean.
const samples = 3

// offsets place the samples of a pixel on a sheared grid: every sample has
// its own column and row, which smooths near-horizontal and near-vertical
// edges alike.
var offsets = func() (o [samples * samples][2]float64) {
	const n = samples
	for i := range n {
		for j := range n {
			o[i*n+j] = [2]float64{
				(float64(i) + (float64(j)+0.5)/n) / n,
				(float64(j) + (float64(i)+0.5)/n) / n,
			}
		}
	}
	return o
}()

// colour returns the sRGB colour of pixel (x, y), opaque.
func (s *scene) colour(x, y int) [4]uint8 {
	var sum vec
	for _, o := range offsets {
		sum = sum.add(s.pixel(float64(x)+o[0], float64(y)+o[1], samples))
	}
	c := sum.mul(1.0 / float64(len(offsets)))
	return [4]uint8{toSRGB(c.x), toSRGB(c.y), toSRGB(c.z), 255}
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

// ray returns the direction of the ray through point (px, py) of the
// picture.
func (s *scene) ray(px, py float64) vec {
	u, v := (px-s.cx)/s.focal, -(py-s.cy)/s.focal
	if !s.turned {
		return vec{u, v, 1}.norm()
	}
	return s.right.mul(u).add(s.up.mul(v)).add(s.fwd).norm()
}

func (s *scene) pixel(px, py float64, ss int) vec {
	d := s.ray(px, py)
	// The size of one sample, as an angle; times distance it is the size of
	// the patch of surface the sample sees.
	ang := 1 / (s.focal * float64(ss))
	return s.trace(s.cam, d, ang).mul(exposure)
}

func (s *scene) trace(o, d vec, ang float64) vec {
	h := s.hit(o, d)
	p, fp := h.p, h.t*ang
	switch h.kind {
	case onSill:
		return s.shadeSill(p, h.n)
	case onFloor:
		return s.shadeFloor(p, d, fp)
	case onCeiling:
		return s.shadeCeiling(p, fp)
	case onSlope:
		return s.shadeSlope(p)
	case onDoor:
		return s.traceDoor(p, d, h.t, ang)
	case onWindow:
		return s.traceWindow(h.win, p, d, fp, ang, h.t)
	}
	var door *rect
	if s.door != nil && h.n.x != 0 && s.door.facing(h.n) {
		door = &s.door.r
	}
	return s.shadeWall(p, h.n, h.along, fp, door)
}
