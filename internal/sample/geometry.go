package sample

import "math"

// surface is what a ray from the camera meets first.
type surface int

const (
	onWall surface = iota
	onFloor
	onCeiling
	onSlope
	onSill
	onWindow
	onDoor
)

// hit is where a ray meets the room.
type hit struct {
	kind  surface
	t     float64 // distance along the ray
	p     vec
	n     vec      // normal into the room, for walls, sills and the slope
	along float64  // horizontal coordinate within a wall
	win   *opening // for onWindow
}

// hit returns the first surface the ray from o along d meets. o must be
// inside the room.
func (s *scene) hit(o, d vec) hit {
	lo := vec{-s.w / 2, 0, roomFront}
	hi := vec{s.w / 2, s.h, s.d}
	t, axis := exit(o, d, lo, hi)
	var near *hit
	if s.slope != nil {
		if ts, ok := s.slope.hit(o, d); ok && ts < t {
			t, near = ts, &hit{kind: onSlope, t: ts, n: s.slope.n}
		}
	}
	for i := range s.windows {
		if ts, n, ok := s.hitSill(&s.windows[i], o, d); ok && ts < t {
			t, near = ts, &hit{kind: onSill, t: ts, n: n}
		}
	}
	if near != nil {
		near.p = o.add(d.mul(near.t))
		return *near
	}
	p := o.add(d.mul(t))
	h := hit{t: t, p: p}
	switch {
	case axis == 1 && d.y < 0:
		h.kind = onFloor
	case axis == 1:
		h.kind = onCeiling
	case axis == 0:
		h.n, h.along = vec{1, 0, 0}, p.z
		if d.x > 0 {
			h.n = vec{-1, 0, 0}
		}
		s.findOpening(&h)
	case d.z > 0:
		h.n, h.along = vec{0, 0, -1}, p.x
		s.findOpening(&h)
	default:
		h.n, h.along = vec{0, 0, 1}, p.x // the front wall, behind the camera
	}
	return h
}

// findOpening marks a wall hit that falls in a doorway or a window.
func (s *scene) findOpening(h *hit) {
	if s.door != nil && s.door.facing(h.n) && s.door.r.contains(h.along, h.p.y) {
		h.kind = onDoor
		return
	}
	for i := range s.windows {
		w := &s.windows[i]
		if w.facing(h.n) && w.r.contains(h.along, h.p.y) {
			h.kind, h.win = onWindow, w
			return
		}
	}
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

// slopePlane is a sloped ceiling: the points p with
// p.y + side·k·p.x = c, where side is +1 for a slope down to the right
// wall and -1 for one down to the left.
type slopePlane struct {
	side, k, c float64
	n          vec // unit normal, into the room
}

func newSlopePlane(r Room, sl Slope) *slopePlane {
	side := 1.0
	if sl.Wall == LeftWall {
		side = -1
	}
	k := (r.Height - sl.Knee) / sl.Run
	return &slopePlane{
		side: side,
		k:    k,
		c:    sl.Knee + k*r.Width/2,
		n:    vec{-side * k, -1, 0}.norm(),
	}
}

// hit returns the distance along d from o, below the plane, to the plane.
func (p *slopePlane) hit(o, d vec) (float64, bool) {
	den := d.y + p.side*p.k*d.x
	if den <= 0 {
		return 0, false
	}
	t := (p.c - o.y - p.side*p.k*o.x) / den
	return t, t > 0
}
