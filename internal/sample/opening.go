package sample

import "math"

// opening is a window or a doorway: a rectangle r in the plane of a wall's
// inner face, a along the wall (x on the back wall, z on a side wall) and
// b up.
type opening struct {
	wall Wall
	r    rect
	axis int     // the wall's axis: 0 for x, 2 for z
	face float64 // the inner face's coordinate on that axis
	out  float64 // +1 or -1, the outward direction on that axis
}

func (s *scene) newOpening(wall Wall, r rect) opening {
	switch wall {
	case LeftWall:
		return opening{wall: wall, r: r, axis: 0, face: -s.w / 2, out: -1}
	case RightWall:
		return opening{wall: wall, r: r, axis: 0, face: s.w / 2, out: 1}
	}
	return opening{wall: wall, r: r, axis: 2, face: s.d, out: 1}
}

// comp returns the component of v on axis.
func comp(v vec, axis int) float64 {
	switch axis {
	case 0:
		return v.x
	case 1:
		return v.y
	}
	return v.z
}

// facing reports whether n, a normal into the room, is the opening's
// wall's.
func (o *opening) facing(n vec) bool { return comp(n, o.axis) == -o.out }

// point returns the room point at (a, b) on the plane depth metres out from
// the wall's inner face.
func (o *opening) point(a, b, depth float64) vec {
	f := o.face + o.out*depth
	if o.axis == 0 {
		return vec{f, b, a}
	}
	return vec{a, b, f}
}

// along returns p's coordinate along the wall.
func (o *opening) along(p vec) float64 {
	if o.axis == 0 {
		return p.z
	}
	return p.x
}

// cross returns the distance along d from p to the plane depth metres out
// from the wall's inner face, and the point where the ray meets it.
func (o *opening) cross(p, d vec, depth float64) (float64, vec) {
	t := (o.face + o.out*depth - comp(p, o.axis)) / comp(d, o.axis)
	return t, p.add(d.mul(t))
}

// box returns the corners of the box that the opening's rectangle sweeps
// between two depths.
func (o *opening) box(r rect, d0, d1 float64) (lo, hi vec) {
	a, b := o.point(r.a0, r.b0, d0), o.point(r.a1, r.b1, d1)
	return vec{math.Min(a.x, b.x), math.Min(a.y, b.y), math.Min(a.z, b.z)},
		vec{math.Max(a.x, b.x), math.Max(a.y, b.y), math.Max(a.z, b.z)}
}

// formFactor returns the share of light that a surface at p facing n
// receives from the opening, by Lambert's formula for a polygon. No
// surface that calls it has an opening behind its own plane, so no
// clipping is needed.
func (o *opening) formFactor(p, n vec) float64 {
	w := o.r
	corners := [4]vec{
		o.point(w.a0, w.b0, 0), o.point(w.a1, w.b0, 0),
		o.point(w.a1, w.b1, 0), o.point(w.a0, w.b1, 0),
	}
	var v [4]vec
	for i, c := range corners {
		v[i] = c.sub(p).norm()
	}
	sum := 0.0
	for i := range 4 {
		a, b := v[i], v[(i+1)%4]
		c := a.cross(b)
		l := math.Sqrt(c.dot(c))
		if l < 1e-12 {
			continue
		}
		sum += math.Acos(math.Max(-1, math.Min(1, a.dot(b)))) * n.dot(c) / l
	}
	return math.Abs(sum) / (2 * math.Pi)
}

const (
	frameWidth   = 0.065
	mullionWidth = 0.05
	transomDrop  = 0.5 // from the top of the opening
	paneWidth    = 0.95
)

// frameCoverage returns how much of the window's frame, mullions and
// transom cover (a, b) on the glass plane, with edges blurred over fp.
func (o *opening) frameCoverage(a, b, fp float64) float64 {
	w := o.r
	inner := rect{w.a0 + frameWidth, w.a1 - frameWidth, w.b0 + frameWidth, w.b1 - frameWidth}
	c := 1 - softRect(inner, a, b, fp)
	panes := max(1, int(math.Round((w.a1-w.a0)/paneWidth)))
	for k := 1; k < panes; k++ {
		mx := w.a0 + (w.a1-w.a0)*float64(k)/float64(panes)
		c = math.Max(c, lineCoverage(math.Abs(a-mx), mullionWidth/2, fp))
	}
	if w.b1-w.b0 < 2*transomDrop+0.3 {
		return c
	}
	return math.Max(c, lineCoverage(math.Abs(b-(w.b1-transomDrop)), mullionWidth/2, fp))
}

// sunCoverage returns how much direct sun reaches p through the window:
// the ray towards the sun must pass the inner and outer faces of the
// opening and miss the frame. The penumbra widens with the distance to the
// window, as a real sun patch does.
func (s *scene) sunCoverage(o *opening, p vec) float64 {
	if comp(s.sun, o.axis)*o.out <= 0 {
		return 0
	}
	t1, q1 := o.cross(p, s.sun, 0)
	if t1 <= 0 {
		return 0
	}
	t2, q2 := o.cross(p, s.sun, glassInset)
	t3, q3 := o.cross(p, s.sun, wallThick)
	const spread = 0.018
	c := softRect(o.r, o.along(q1), q1.y, t1*spread)
	c *= softRect(o.r, o.along(q3), q3.y, t3*spread)
	if c == 0 {
		return 0
	}
	return c * (1 - o.frameCoverage(o.along(q2), q2.y, t2*spread))
}

// sunPatch returns the sunlight that a window throws on the floor and the
// floor reflects, as one source at the window's centre projected along the
// sun onto the floor.
func (s *scene) sunPatch(o *opening) (bounce, bool) {
	facing := comp(s.sun, o.axis) * o.out
	if facing <= 0 || s.sun.y <= 0 {
		return bounce{}, false
	}
	w := o.r
	c := o.point((w.a0+w.a1)/2, (w.b0+w.b1)/2, 0)
	area := (w.a1 - w.a0) * (w.b1 - w.b0) * facing / s.sun.y
	return bounce{
		at:    c.sub(s.sun.mul(c.y / s.sun.y)),
		power: s.sunLight.hadamard(oakLight).mul(s.sun.y * area * 0.5),
	}, true
}

// The window board: a painted ledge under the window, standing out from
// the wall.
const (
	sillDepth = 0.045
	sillThick = 0.03
	sillEars  = 0.06 // how far it runs past the opening on each side
)

func (s *scene) hitSill(o *opening, p, d vec) (float64, vec, bool) {
	w := o.r
	lo, hi := o.box(rect{w.a0 - sillEars, w.a1 + sillEars, w.b0 - sillThick, w.b0}, -sillDepth, 0)
	return enter(p, d, lo, hi)
}

// traceWindow follows a ray that entered the window opening: it ends on a
// face of the reveal, on the frame, or goes out through the glass.
func (s *scene) traceWindow(o *opening, p, d vec, fp, ang, t0 float64) vec {
	lo, hi := o.box(o.r, 0, glassInset)
	t, axis := exit(p, d, lo, hi)
	q := p.add(d.mul(t))
	fp = (t0 + t) * ang
	if axis == o.axis {
		fc := o.frameCoverage(o.along(q), q.y, fp)
		frame := trimColor.mul(0.55)
		return s.outside(o, q, d).mul(1 - fc).add(frame.mul(fc))
	}
	// The reveal is lit by the window it surrounds, most near the glass.
	depth := (comp(q, o.axis) - o.face) * o.out / glassInset
	light := 0.42 + 0.45*depth
	if axis == 1 && d.y < 0 {
		light += 0.1 // the sill faces the sky
	}
	c := trimColor.mul(light)
	// A thin shadow line where the reveal meets the frame.
	return c.mul(1 - 0.3*lineCoverage((o.face+o.out*glassInset-comp(q, o.axis))*o.out, 0.004, fp))
}

// outside is the view through the glass: a bright sky, a band of trees and
// a lawn, all washed out as in a photograph exposed for the room. The view
// is drawn as if through the back wall; a side window turns the ray first.
func (s *scene) outside(o *opening, q, d vec) vec {
	if o.axis == 0 {
		q = vec{-o.out * q.z, q.y, s.d + o.out*(q.x-o.face)}
		d = vec{-o.out * d.z, d.y, o.out * d.x}
	}
	return s.view3(q, d).mul(s.view)
}

func (s *scene) view3(q, d vec) vec {
	horizon, zenith := skyHorizon, skyZenith
	e := d.y / math.Hypot(d.x, d.z)
	k := smoothstep(0, 0.22, e)
	sky := vec{lerp(horizon.x, zenith.x, k), lerp(horizon.y, zenith.y, k), lerp(horizon.z, zenith.z, k)}.mul(0.75)
	haze := func(c vec, k float64) vec { return c.mul(1 - k).add(sky.mul(k)) }
	treeZ := s.d + 32
	tt := (treeZ - q.z) / d.z
	h := q.add(d.mul(tt))
	if d.y < 0 && (0-q.y)/d.y < tt {
		g := q.add(d.mul((0 - q.y) / d.y))
		// Mown stripes, and the shade of the trees at the far end.
		stripe := 0.93 + 0.07*math.Sin(g.x*1.4)
		shade := 1 - 0.35*smoothstep(treeZ-8, treeZ, g.z)
		lawn := lawnColor.mul(0.5 * stripe * shade * (0.9 + 0.2*s.sky.fbm(g.x*0.7, g.z*0.7, 3)))
		return haze(lawn, 0.08)
	}
	// Tree crowns, each a ragged disc shaded from above, over a hedge.
	var best, trunk *crown
	for i := range s.crowns {
		c := &s.crowns[i]
		dx, dy := (h.x-c.x)/c.r, (h.y-c.y)/(1.2*c.r)
		rag := 0.85 + 0.3*s.sky.fbm(h.x*1.6+c.x, h.y*1.6, 3)
		if dx*dx+dy*dy < rag*rag && (best == nil || c.y < best.y) {
			best = c
		}
		if math.Abs(h.x-c.x) < 0.16 && h.y < c.y {
			trunk = c
		}
	}
	if best == nil && trunk != nil && h.y > 1.5 {
		return haze(trunkColor.mul(0.25), 0.15)
	}
	hedge := 1.6 + 0.25*s.sky.fbm(h.x*0.8, 3.3, 2)
	if best != nil || h.y < hedge {
		clump := s.sky.fbm(h.x*3.1, h.y*3.1, 4)
		lit := 0.45 + 0.55*clamp01((h.y-hedge+1)/2)
		if best != nil {
			lit = 0.35 + 0.65*clamp01((h.y-best.y+best.r)/(2*best.r))
		}
		tree := leafColor.mul(0.45 * lit * (0.5 + clump))
		return haze(tree, 0.1)
	}
	return sky
}

// traceDoor follows a ray through the doorway: the lining of the opening,
// then a dim hall beyond it. A doorway on the left wall is traced as its
// mirror image on the right.
func (s *scene) traceDoor(p, d vec, t0, ang float64) vec {
	if s.door.wall == LeftWall {
		p, d = vec{-p.x, p.y, p.z}, vec{-d.x, d.y, d.z}
	}
	dr := s.door.r
	lo := vec{s.w / 2, 0, dr.a0}
	hi := vec{s.w/2 + wallThick, dr.b1, dr.a1}
	t, axis := exit(p, d, lo, hi)
	q := p.add(d.mul(t))
	fp := (t0 + t) * ang
	// The lining of the opening darkens away from the room.
	in := (q.x - s.w/2) / wallThick
	switch axis {
	case 1:
		if d.y < 0 {
			return s.floor.albedo(q.x, q.z, fp, fp).mul(0.5 - 0.1*in)
		}
		return trimColor.mul(0.4 - 0.08*in)
	case 2:
		return trimColor.mul(0.6 - 0.14*in)
	}
	hlo := vec{s.w/2 + wallThick, 0, dr.a0 - 2.6}
	hhi := vec{s.hallEnd, s.h, dr.a1 + 0.9}
	th, hax := exit(q, d, hlo, hhi)
	h := q.add(d.mul(th))
	fp = (t0 + t + th) * ang
	// Light in the hall comes from the room, so it fades with the
	// distance from the doorway.
	dist := math.Hypot(h.x-s.w/2, h.z-(dr.a0+dr.a1)/2)
	light := (0.12 + 0.2*decay(dist/1.2)) * (1.05 - 0.25*h.y/s.h)
	switch {
	case hax == 1 && d.y < 0:
		return s.floor.albedo(h.x, h.z, fp, fp/math.Max(math.Abs(d.y), 0.02)).mul(light * 0.9)
	case hax == 1:
		return ceilingColor.mul(light)
	case h.y < skirting:
		return trimColor.mul(light)
	}
	return hallWallColor.mul(light * occlusion(h.y, s.h-h.y))
}
