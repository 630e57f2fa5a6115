package sample

import "math"

var (
	sideWallColor = srgb(241, 238, 232)
	backWallColor = srgb(200, 194, 184)
	ceilingColor  = srgb(248, 247, 244)
	trimColor     = srgb(250, 249, 246)
	ambientLight  = srgb(255, 251, 245)
	hallWallColor = srgb(236, 230, 218)
	skyHorizon    = srgb(250, 250, 246)
	skyZenith     = srgb(168, 204, 242)
	lawnColor     = srgb(142, 180, 92)
	trunkColor    = srgb(92, 80, 68)
	leafColor     = srgb(88, 128, 62)
)

// softRect returns how much of a rectangle covers point (a, b) when its
// edges are blurred over soft.
func softRect(r rect, a, b, soft float64) float64 {
	soft = math.Max(soft, 1e-4)
	ca := clamp01((a-r.a0)/soft+0.5) * clamp01((r.a1-a)/soft+0.5)
	cb := clamp01((b-r.b0)/soft+0.5) * clamp01((r.b1-b)/soft+0.5)
	return ca * cb
}

// irradiance is the light falling on a surface at p facing n: a warm
// ambient share, the sky through the window, and the sun.
func (s *scene) irradiance(p, n vec) vec {
	// Daylight comes through the window mostly from the sky, travelling
	// downwards: what lies below the window gets it all, what lies above
	// gets only what the ground outside reflects up.
	e := s.ambient
	for i := range s.windows {
		w := &s.windows[i]
		up := smoothstep(w.r.b0, w.r.b1+0.3, p.y)
		e = e.add(s.winLight.mul((1.3 - 0.95*up) * 1.3 * w.formFactor(p, n)))
	}
	for _, b := range s.bounces {
		if l := b.at.sub(p); l.dot(l) > 1e-6 {
			d2 := math.Max(l.dot(l), 0.8)
			l = l.norm()
			e = e.add(b.power.mul(math.Max(0, n.dot(l)) * math.Max(0, -l.y) / (math.Pi * d2)))
		}
	}
	if cos := n.dot(s.sun); cos > 0 {
		c := 0.0
		for i := range s.windows {
			c += s.sunCoverage(&s.windows[i], p)
		}
		if c > 0 {
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
	ao := occlusion(p.x+s.w/2, s.w/2-p.x, s.d-p.z)
	c := a.hadamard(s.irradiance(p, vec{0, 1, 0})).mul(ao)

	// A satin lacquer mirrors the windows, blurred and stronger at grazing
	// angles.
	r := vec{d.x, -d.y, d.z}
	for i := range s.windows {
		w := &s.windows[i]
		if comp(r, w.axis)*w.out <= 0 {
			continue
		}
		t, q := w.cross(p, r, 0)
		cov := softRect(w.r, w.along(q), q.y, 0.1+t*0.3)
		g := 1 - math.Abs(d.y)
		fres := 0.03 + 0.5*g*g*g*g*g
		c = c.add(s.winLight.mul(cov * fres * 0.9))
	}
	return c
}

func (s *scene) shadeSill(p, n vec) vec {
	return trimColor.hadamard(s.irradiance(p, n))
}

func (s *scene) shadeCeiling(p vec, fp float64) vec {
	ao := occlusion(p.x+s.w/2, s.w/2-p.x, s.d-p.z)
	albedo := ceilingColor
	for _, c := range s.room.Downlights {
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

// shadeSlope shades a point of a sloped ceiling, lit as the flat one.
func (s *scene) shadeSlope(p vec) vec {
	ao := occlusion(p.x+s.w/2, s.w/2-p.x, s.d-p.z)
	return ceilingColor.hadamard(s.irradiance(p, s.slope.n)).mul(1.5 * ao)
}

// shadeWall shades a point of a wall. along is the horizontal coordinate
// within the wall; hole is the doorway on this wall, whose trim it draws,
// or nil.
func (s *scene) shadeWall(p, n vec, along, fp float64, hole *rect) vec {
	albedo := sideWallColor
	var ao float64
	if n.z != 0 {
		albedo = backWallColor
		ao = occlusion(p.y, s.room.ceilingAt(p.x)-p.y, p.x+s.w/2, s.w/2-p.x)
	} else {
		ao = occlusion(p.y, s.room.ceilingAt(p.x)-p.y, s.d-p.z)
	}
	albedo = albedo.mul(1 + 0.03*(s.wallTex.fbm(along*1.7, p.y*1.7, 3)-0.5))

	const trim = 0.075
	switch {
	case hole != nil && along > hole.a0-trim && along < hole.a1+trim && p.y < hole.b1+trim:
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
