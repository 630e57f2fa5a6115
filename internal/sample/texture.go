package sample

import (
	"math"
	"math/rand/v2"
	"sort"
)

type vec struct{ x, y, z float64 }

func (a vec) add(b vec) vec      { return vec{a.x + b.x, a.y + b.y, a.z + b.z} }
func (a vec) sub(b vec) vec      { return vec{a.x - b.x, a.y - b.y, a.z - b.z} }
func (a vec) mul(s float64) vec  { return vec{a.x * s, a.y * s, a.z * s} }
func (a vec) dot(b vec) float64  { return a.x*b.x + a.y*b.y + a.z*b.z }
func (a vec) hadamard(b vec) vec { return vec{a.x * b.x, a.y * b.y, a.z * b.z} }
func (a vec) norm() vec          { return a.mul(1 / math.Sqrt(a.dot(a))) }
func (a vec) cross(b vec) vec {
	return vec{a.y*b.z - a.z*b.y, a.z*b.x - a.x*b.z, a.x*b.y - a.y*b.x}
}

// srgb returns the linear value of an sRGB colour given in 0..255, so that
// colours can be picked the way a designer names them and lit linearly.
func srgb(r, g, b float64) vec {
	f := func(c float64) float64 {
		c /= 255
		if c <= 0.04045 {
			return c / 12.92
		}
		return math.Pow((c+0.055)/1.055, 2.4)
	}
	return vec{f(r), f(g), f(b)}
}

func clamp01(v float64) float64 { return math.Max(0, math.Min(1, v)) }

func smoothstep(a, b, v float64) float64 {
	t := clamp01((v - a) / (b - a))
	return t * t * (3 - 2*t)
}

func lerp(a, b, t float64) float64 { return a + (b-a)*t }

// noise is smooth 2D value noise over a lattice of random values.
type noise struct {
	perm [512]uint16
	val  [256]float64
}

func newNoise(r *rand.Rand) *noise {
	n := new(noise)
	for i, p := range r.Perm(256) {
		n.perm[i], n.perm[i+256] = uint16(p), uint16(p)
		n.val[i] = r.Float64()
	}
	return n
}

func (n *noise) lattice(x, y int) float64 {
	return n.val[n.perm[int(n.perm[x&255])+y&255]]
}

// at returns noise in [0, 1] at (x, y).
func (n *noise) at(x, y float64) float64 {
	fx, fy := math.Floor(x), math.Floor(y)
	ix, iy := int(fx), int(fy)
	tx, ty := x-fx, y-fy
	tx, ty = tx*tx*(3-2*tx), ty*ty*(3-2*ty)
	a := lerp(n.lattice(ix, iy), n.lattice(ix+1, iy), tx)
	b := lerp(n.lattice(ix, iy+1), n.lattice(ix+1, iy+1), tx)
	return lerp(a, b, ty)
}

// fbm sums octaves of noise, each twice as fine and half as strong.
func (n *noise) fbm(x, y float64, octaves int) float64 {
	sum, amp, total := 0.0, 1.0, 0.0
	for range octaves {
		sum += amp * n.at(x, y)
		total += amp
		x, y, amp = x*2.03+17.1, y*2.03+5.3, amp*0.5
	}
	return sum / total
}

// The two ends of the range of plank colours.
var (
	oakLight = srgb(214, 180, 138)
	oakWarm  = srgb(200, 156, 108)
)

// board is one floor plank between two end joints.
type board struct {
	end   float64 // z where the board ends
	tone  float64 // brightness factor
	warm  float64 // shift towards red-brown
	seedX float64 // offsets into the grain noise, so boards differ
	seedZ float64
}

// floor lays planks along z, in columns of equal width, each column cut into
// boards of random length with staggered joints as a fitter would lay them.
type floor struct {
	width   float64
	x0      float64
	columns [][]board
	grain   *noise
}

const (
	floorStartZ = -3.0
	floorEndZ   = 14.0
)

func newFloor(r *rand.Rand, x0, width float64, columns int) *floor {
	f := &floor{width: width, x0: x0, grain: newNoise(r)}
	for range columns {
		var col []board
		z := floorStartZ - r.Float64()*2
		for z < floorEndZ {
			z += 1.0 + r.Float64()*1.3
			col = append(col, board{
				end:   z,
				tone:  0.86 + r.Float64()*0.2,
				warm:  r.Float64()*2 - 1,
				seedX: r.Float64() * 200,
				seedZ: r.Float64() * 200,
			})
		}
		f.columns = append(f.columns, col)
	}
	return f
}

// albedo returns the floor colour at (x, z). fx and fz are the size of the
// area one sample covers across and along the planks: lines thinner than
// that fade instead of flickering.
func (f *floor) albedo(x, z, fx, fz float64) vec {
	u := (x - f.x0) / f.width
	ci := int(math.Floor(u))
	col := f.columns[((ci%len(f.columns))+len(f.columns))%len(f.columns)]
	bi := sort.Search(len(col), func(i int) bool { return col[i].end > z })
	if bi == len(col) {
		bi = len(col) - 1
	}
	b := col[bi]
	start := floorStartZ
	if bi > 0 {
		start = col[bi-1].end
	}
	across := (u - math.Floor(u)) * f.width // metres from the plank's edge
	along := z - start

	g := f.grain
	// Long streaks, then finer wavy lines of the growth rings; the fine
	// lines fade out where a sample covers more than one of them.
	streak := g.fbm(across*55+b.seedX, along*0.7+b.seedZ, 4)
	ringPhase := across*60 + 3*g.fbm(across*4+b.seedX, along*0.3+b.seedZ, 3)
	ring := math.Sin(ringPhase*2*math.Pi) * (1 - smoothstep(0.004, 0.012, fx))
	ring = math.Abs(ring * ring * ring)
	blotch := g.fbm(x*1.3+40, z*0.5, 3)

	base, warm := oakLight, oakWarm
	c := base.mul(1 - 0.35*clamp01(0.5+0.5*b.warm)).add(warm.mul(0.35 * clamp01(0.5+0.5*b.warm)))
	k := b.tone * (1 + 0.3*(streak-0.5)) * (1 - 0.14*ring) * (1 + 0.08*(blotch-0.5))
	c = c.mul(k)

	// The bevel between planks and the butt joints read as dark lines.
	gap := lineCoverage(math.Min(across, f.width-across), 0.0018, fx)
	joint := lineCoverage(math.Min(along, b.end-along), 0.0012, fz)
	return c.mul(1 - 0.55*math.Max(gap, joint))
}

// lineCoverage returns how much of a sample of size fp at distance d from a
// line of half-width hw the line covers, in [0, 1].
func lineCoverage(d, hw, fp float64) float64 {
	fp = math.Max(fp, 1e-5)
	return clamp01((hw-d)/fp+0.5) * math.Min(1, 2*hw/fp)
}
