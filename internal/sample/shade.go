package sample

import "math"

var (
	sideWallColor = srgb(241, 238, 232)
	backWallColor = srgb(200, 194, 184)
	ceilingColor  = srgb(248, 247, 244)
	trimColor     = srgb(250, 249, 246)
	ambientLight  = srgb(255, 251, 245).mul(0.36)
	hallWallColor = srgb(236, 230, 218)
	skyHorizon    = srgb(250, 250, 246)
	skyZenith     = srgb(168, 204, 242)
	lawnColor     = srgb(142, 180, 92)
	trunkColor    = srgb(92, 80, 68)
	leafColor     = srgb(88, 128, 62)
)

// windowFormFactor returns the share of light that a surface at p facing n
// receives from the window opening, by Lambert's formula for a polygon. No
// surface that calls it has the window behind its own plane, so no clipping
// is needed.
func (s *scene) windowFormFactor(p, n vec) float64 {
	w := s.window
	corners := [4]vec{
		{w.a0, w.b0, roomDepth}, {w.a1, w.b0, roomDepth},
		{w.a1, w.b1, roomDepth}, {w.a0, w.b1, roomDepth},
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

// softRect returns how much of a rectangle covers point (a, b) when its
// edges are blurred over soft.
func softRect(r rect, a, b, soft float64) float64 {
	soft = math.Max(soft, 1e-4)
	ca := clamp01((a-r.a0)/soft+0.5) * clamp01((r.a1-a)/soft+0.5)
	cb := clamp01((b-r.b0)/soft+0.5) * clamp01((r.b1-b)/soft+0.5)
	return ca * cb
}

const (
	frameWidth   = 0.065
	mullionWidth = 0.05
	transomDrop  = 0.5 // from the top of the opening
)

// frameCoverage returns how much of the window's frame, mullions and
// transom cover (x, y) on the glass plane, with edges blurred over fp.
func (s *scene) frameCoverage(x, y, fp float64) float64 {
	w := s.window
	inner := rect{w.a0 + frameWidth, w.a1 - frameWidth, w.b0 + frameWidth, w.b1 - frameWidth}
	c := 1 - softRect(inner, x, y, fp)
	for k := 1; k <= 2; k++ {
		mx := w.a0 + (w.a1-w.a0)*float64(k)/3
		c = math.Max(c, lineCoverage(math.Abs(x-mx), mullionWidth/2, fp))
	}
	return math.Max(c, lineCoverage(math.Abs(y-(w.b1-transomDrop)), mullionWidth/2, fp))
}

// sunCoverage returns how much direct sun reaches p through the window:
// the ray towards the sun must pass the inner and outer faces of the
// opening and miss the frame. The penumbra widens with the distance to the
// window, as a real sun patch does.
func (s *scene) sunCoverage(p vec) float64 {
	if s.sun.z <= 0 {
		return 0
	}
	at := func(z float64) (vec, float64) {
		t := (z - p.z) / s.sun.z
		return p.add(s.sun.mul(t)), t
	}
	q1, t1 := at(roomDepth)
	if t1 <= 0 {
		return 0
	}
	q2, t2 := at(roomDepth + glassInset)
	q3, t3 := at(roomDepth + wallThick)
	const spread = 0.018
	c := softRect(s.window, q1.x, q1.y, t1*spread)
	c *= softRect(s.window, q3.x, q3.y, t3*spread)
	if c == 0 {
		return 0
	}
	return c * (1 - s.frameCoverage(q2.x, q2.y, t2*spread))
}

// irradiance is the light falling on a surface at p facing n: a warm
// ambient share, the sky through the window, and the sun.
func (s *scene) irradiance(p, n vec) vec {
	// Daylight comes through the window mostly from the sky, travelling
	// downwards: what lies below the window gets it all, what lies above
	// gets only what the ground outside reflects up.
	up := smoothstep(s.window.b0, s.window.b1+0.3, p.y)
	e := ambientLight.add(s.winLight.mul((1.3 - 0.95*up) * 1.3 * s.windowFormFactor(p, n)))
	if l := s.bounce.sub(p); l.dot(l) > 1e-6 {
		d2 := math.Max(l.dot(l), 0.8)
		l = l.norm()
		e = e.add(s.bouncePw.mul(math.Max(0, n.dot(l)) * math.Max(0, -l.y) / (math.Pi * d2)))
	}
	if cos := n.dot(s.sun); cos > 0 {
		if c := s.sunCoverage(p); c > 0 {
			e = e.add(s.sunLight.mul(c * cos))
		}
	}
	return e
}

// decay is a smooth falloff close to exp(-x) for x >= 0, in plain
// arithmetic: it is called for most samples, and math.Exp is both the
// slowest part of a sample and an assembly routine on some platforms.
func decay(x float64) float64 {
	return 1 / (1 + x*(1+x*(0.5+x*(1.0/6))))
}

// occlusion darkens the inside corners of the room, where less of the
// room's light can reach.
func occlusion(dists ...float64) float64 {
	k := 1.0
	for _, d := range dists {
		k *= 1 - 0.15*decay(math.Max(d, 0)/0.2)
	}
	return k
}

func (s *scene) shadeFloor(p, d vec, fp float64) vec {
	a := s.floor.albedo(p.x, p.z, fp, fp/math.Max(math.Abs(d.y), 0.02))
	ao := occlusion(p.x+roomWidth/2, roomWidth/2-p.x, roomDepth-p.z)
	c := a.hadamard(s.irradiance(p, vec{0, 1, 0})).mul(ao)

	// A satin lacquer mirrors the window, blurred and stronger at grazing
	// angles.
	r := vec{d.x, -d.y, d.z}
	if r.z > 0 {
		t := (roomDepth - p.z) / r.z
		q := p.add(r.mul(t))
		cov := softRect(s.window, q.x, q.y, 0.1+t*0.3)
		g := 1 - math.Abs(d.y)
		fres := 0.03 + 0.5*g*g*g*g*g
		c = c.add(s.winLight.mul(cov * fres * 0.9))
	}
	return c
}

func (s *scene) shadeSill(p, n vec) vec {
	return trimColor.hadamard(s.irradiance(p, n))
}

// downlights are the centres of the recessed ceiling lights (switched off).
var downlights = [...][2]float64{{-1.2, 3.1}, {1.2, 3.1}, {-1.2, 5.0}, {1.2, 5.0}}

func (s *scene) shadeCeiling(p vec, fp float64) vec {
	ao := occlusion(p.x+roomWidth/2, roomWidth/2-p.x, roomDepth-p.z)
	albedo := ceilingColor
	for _, c := range downlights {
		r := math.Hypot(p.x-c[0], p.z-c[1])
		if r > 0.1 {
			continue
		}
		// A bright bezel around a greyer diffuser.
		bezel := clamp01((0.06-r)/fp + 0.5)
		lens := clamp01((0.045-r)/fp + 0.5)
		albedo = albedo.mul(1 + 0.04*bezel - 0.22*lens)
	}
	// The floor and the sun patch light the ceiling more than the single
	// bounce term accounts for.
	return albedo.hadamard(s.irradiance(p, vec{0, -1, 0})).mul(1.5 * ao)
}

// shadeWall shades a point of a wall. along is the horizontal coordinate
// within the wall; rightWall says whether the doorway's trim is on it.
func (s *scene) shadeWall(p, n vec, along, fp float64, hole rect, rightWall bool) vec {
	albedo := sideWallColor
	var ao float64
	if n.z != 0 {
		albedo = backWallColor
		ao = occlusion(p.y, roomHeight-p.y, p.x+roomWidth/2, roomWidth/2-p.x)
	} else {
		ao = occlusion(p.y, roomHeight-p.y, roomDepth-p.z)
	}
	albedo = albedo.mul(1 + 0.03*(s.wallTex.fbm(along*1.7, p.y*1.7, 3)-0.5))

	const trim = 0.075
	switch {
	case rightWall && along > hole.a0-trim && along < hole.a1+trim && p.y < hole.b1+trim:
		// Architrave around the doorway: a raised band with a shadow
		// line along its outer edge.
		albedo = trimColor
		edge := math.Min(math.Min(along-(hole.a0-trim), hole.a1+trim-along), hole.b1+trim-p.y)
		albedo = albedo.mul(1 - 0.25*lineCoverage(edge, 0.004, fp))
	case p.y < skirting:
		albedo = trimColor.mul(0.97)
		// The rounded top of the board catches the light.
		albedo = albedo.mul(1 + 0.05*lineCoverage(skirting-p.y, 0.005, fp))
	case p.y < skirting+0.006:
		albedo = albedo.mul(1 - 0.3*lineCoverage(p.y-skirting, 0.003, fp))
	}
	return albedo.hadamard(s.irradiance(p, n)).mul(ao)
}

// traceWindow follows a ray that entered the window opening: it ends on a
// face of the reveal, on the frame, or goes out through the glass.
func (s *scene) traceWindow(p, d vec, fp, ang, t0 float64) vec {
	w := s.window
	lo := vec{w.a0, w.b0, roomDepth}
	hi := vec{w.a1, w.b1, roomDepth + glassInset}
	t, axis := exit(p, d, lo, hi)
	q := p.add(d.mul(t))
	fp = (t0 + t) * ang
	if axis == 2 {
		fc := s.frameCoverage(q.x, q.y, fp)
		frame := trimColor.mul(0.55)
		return s.outside(q, d).mul(1 - fc).add(frame.mul(fc))
	}
	// The reveal is lit by the window it surrounds, most near the glass.
	depth := (q.z - roomDepth) / glassInset
	light := 0.42 + 0.45*depth
	if axis == 1 && d.y < 0 {
		light += 0.1 // the sill faces the sky
	}
	c := trimColor.mul(light)
	// A thin shadow line where the reveal meets the frame.
	return c.mul(1 - 0.3*lineCoverage(roomDepth+glassInset-q.z, 0.004, fp))
}

// outside is the view through the glass: a bright sky, a band of trees and
// a lawn, all washed out as in a photograph exposed for the room.
func (s *scene) outside(q, d vec) vec {
	horizon, zenith := skyHorizon, skyZenith
	e := d.y / math.Hypot(d.x, d.z)
	k := smoothstep(0, 0.22, e)
	sky := vec{lerp(horizon.x, zenith.x, k), lerp(horizon.y, zenith.y, k), lerp(horizon.z, zenith.z, k)}.mul(0.75)
	haze := func(c vec, k float64) vec { return c.mul(1 - k).add(sky.mul(k)) }
	const treeZ = roomDepth + 32
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
// then a dim hall beyond it.
func (s *scene) traceDoor(p, d vec, t0, ang float64) vec {
	dr := s.door
	lo := vec{roomWidth / 2, 0, dr.a0}
	hi := vec{roomWidth/2 + wallThick, dr.b1, dr.a1}
	t, axis := exit(p, d, lo, hi)
	q := p.add(d.mul(t))
	fp := (t0 + t) * ang
	// The lining of the opening darkens away from the room.
	in := (q.x - roomWidth/2) / wallThick
	switch axis {
	case 1:
		if d.y < 0 {
			return s.floor.albedo(q.x, q.z, fp, fp).mul(0.5 - 0.1*in)
		}
		return trimColor.mul(0.4 - 0.08*in)
	case 2:
		return trimColor.mul(0.6 - 0.14*in)
	}
	hlo := vec{roomWidth/2 + wallThick, 0, dr.a0 - 2.6}
	hhi := vec{s.hallEnd, roomHeight, dr.a1 + 0.9}
	th, hax := exit(q, d, hlo, hhi)
	h := q.add(d.mul(th))
	fp = (t0 + t + th) * ang
	// Light in the hall comes from the room, so it fades with the
	// distance from the doorway.
	dist := math.Hypot(h.x-roomWidth/2, h.z-(dr.a0+dr.a1)/2)
	light := (0.12 + 0.2*decay(dist/1.2)) * (1.05 - 0.25*h.y/roomHeight)
	switch {
	case hax == 1 && d.y < 0:
		return s.floor.albedo(h.x, h.z, fp, fp/math.Max(math.Abs(d.y), 0.02)).mul(light * 0.9)
	case hax == 1:
		return ceilingColor.mul(light)
	case h.y < skirting:
		return trimColor.mul(light)
	}
	return hallWallColor.mul(light * occlusion(h.y, roomHeight-h.y))
}
