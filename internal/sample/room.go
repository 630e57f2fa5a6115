package sample

import (
	"errors"
	"fmt"
	"math"
)

// Room describes an empty room for RenderRoom. Lengths are in metres, in
// room coordinates: x to the right, y up, z away from the camera. The floor
// is y = 0, the side walls are x = ±Width/2, the back wall is z = Depth and
// the front wall, behind the camera, is z = -0.5.
type Room struct {
	Width, Depth, Height float64
	// Windows are the openings that light the room. None leaves it lit by
	// the ambient light alone.
	Windows []Window
	// Door is a doorway to a dim hall; nil means none.
	Door *Door
	// Slope turns the ceiling down towards one side wall, as under a roof;
	// nil means a flat ceiling.
	Slope *Slope
	// Downlights are the centres (x, z) of recessed ceiling lights, drawn
	// switched off on the flat part of the ceiling.
	Downlights [][2]float64
	Camera     Camera
	Light      Light
	// Seed fixes the random choices: floor boards, wall texture, the trees
	// outside. The same room and size always give the same pixels.
	Seed uint64
}

// Wall names a wall of the room.
type Wall int

// The walls a window, a door or a slope can be on.
const (
	BackWall Wall = iota
	LeftWall
	RightWall
)

func (w Wall) String() string {
	switch w {
	case BackWall:
		return "back"
	case LeftWall:
		return "left"
	case RightWall:
		return "right"
	}
	return fmt.Sprintf("Wall(%d)", int(w))
}

// Window is a glazed opening. From and To bound it along its wall: x on the
// back wall, z on a side wall. Sill and Top are the heights of its bottom
// and top edges.
type Window struct {
	Wall      Wall
	From, To  float64
	Sill, Top float64
}

// Door is a doorway on a side wall, from z = From to z = To and Height
// tall, opening onto a hall.
type Door struct {
	Wall     Wall
	From, To float64
	Height   float64
}

// Slope is a ceiling that falls towards the side wall Wall: it meets that
// wall at height Knee and the flat ceiling at Run metres from it.
type Slope struct {
	Wall Wall
	Knee float64
	Run  float64
}

// Camera is a pinhole camera at (X, Y, Z). With all angles zero it looks
// straight down the room along z, level. Yaw turns it to the right, Pitch
// up, and Roll turns it clockwise about its axis, so that the picture's
// verticals lean. FOV is the horizontal field of view. Angles are in
// degrees.
type Camera struct {
	X, Y, Z          float64
	Yaw, Pitch, Roll float64
	FOV              float64
}

// Light is the daylight of a room. Colours are sRGB triples in 0..255.
type Light struct {
	// Sun points towards the sun; it needs not be of unit length. Sunlight
	// enters through a window whose outward side faces it.
	Sun      [3]float64
	SunColor [3]float64
	// SunPower scales the sunlight; 0 is an overcast day.
	SunPower float64
	// Sky is the colour of the light that the window openings give,
	// SkyPower its strength.
	Sky      [3]float64
	SkyPower float64
	// Ambient is the strength of the light that fills the room evenly.
	Ambient float64
	// View scales the brightness of what is seen through the glass.
	View float64
}

// DemoRoom returns the living room of the demo photo.
func DemoRoom() Room {
	return Room{
		Width: 5.2, Depth: 6.2, Height: 2.7,
		Windows:    []Window{{Wall: BackWall, From: -1.55, To: 1.35, Sill: 0.42, Top: 2.36}},
		Door:       &Door{Wall: RightWall, From: 3.9, To: 4.82, Height: 2.08},
		Downlights: [][2]float64{{-1.2, 3.1}, {1.2, 3.1}, {-1.2, 5.0}, {1.2, 5.0}},
		Camera:     Camera{X: -0.25, Y: 1.32, Z: 0, FOV: 78},
		Light: Light{
			Sun:      [3]float64{0.22, 0.58, 0.78},
			SunColor: [3]float64{255, 238, 212},
			SunPower: 1.5,
			Sky:      [3]float64{255, 250, 242},
			SkyPower: 1,
			Ambient:  0.36,
			View:     1,
		},
		Seed: demoSeed,
	}
}

// demoSeed fixes the random choices of the demo picture, so that every
// render is the same down to the byte.
const demoSeed = 20260611

// roomFront is the z of the front wall, behind the camera.
const roomFront = -0.5

// Validate reports the first thing that makes r impossible to draw.
func (r Room) Validate() error {
	if !(r.Width > 1 && r.Depth > 1 && r.Height > 1.5) {
		return fmt.Errorf("room %gx%gx%g m: width and depth must exceed 1 m and height 1.5 m", r.Width, r.Depth, r.Height)
	}
	c := r.Camera
	if math.Abs(c.X) >= r.Width/2 || c.Y <= 0 || c.Y >= r.ceilingAt(c.X) || c.Z <= roomFront || c.Z >= r.Depth {
		return fmt.Errorf("camera at (%g, %g, %g) is not inside the room", c.X, c.Y, c.Z)
	}
	if !(c.FOV > 10 && c.FOV < 120) {
		return fmt.Errorf("field of view %g° is outside (10, 120)", c.FOV)
	}
	if math.Abs(c.Yaw)+c.FOV/2 >= 85 || math.Abs(c.Pitch) > 30 || math.Abs(c.Roll) > 30 {
		return errors.New("camera turned too far: yaw plus half the field of view must stay under 85°, pitch and roll within 30°, so the bare wall behind the camera stays out of view")
	}
	for i, w := range r.Windows {
		if err := r.checkWindow(w); err != nil {
			return fmt.Errorf("window %d: %w", i, err)
		}
	}
	if d := r.Door; d != nil {
		if d.Wall == BackWall {
			return errors.New("door: only a side wall can have one")
		}
		if err := r.checkSpan(d.Wall, d.From, d.To, 0, d.Height); err != nil {
			return fmt.Errorf("door: %w", err)
		}
	}
	if s := r.Slope; s != nil {
		if s.Wall == BackWall || !(s.Knee > 0.5 && s.Knee < r.Height) || !(s.Run > 0 && s.Run < r.Width) {
			return errors.New("slope: needs a side wall, a knee between 0.5 m and the room's height, and a run inside the room")
		}
	}
	return nil
}

func (r Room) checkWindow(w Window) error {
	if err := r.checkSpan(w.Wall, w.From, w.To, w.Sill, w.Top); err != nil {
		return err
	}
	if w.Sill <= sillThick {
		return errors.New("sill too low for its board")
	}
	return nil
}

// checkSpan checks that an opening lies within its wall, under the
// ceiling.
func (r Room) checkSpan(wall Wall, from, to, bottom, top float64) error {
	lo, hi, x := -r.Width/2, r.Width/2, 0.0
	switch wall {
	case BackWall:
		x = from
	case LeftWall, RightWall:
		lo, hi, x = 0, r.Depth, r.Width/2
		if wall == LeftWall {
			x = -x
		}
	default:
		return fmt.Errorf("unknown wall %v", wall)
	}
	if !(from >= lo && to <= hi && from < to && bottom >= 0 && bottom < top) {
		return fmt.Errorf("%g..%g × %g..%g m does not fit the %v wall", from, to, bottom, top, wall)
	}
	ceil := r.ceilingAt(x)
	if wall == BackWall {
		// A slope is straight, so its lowest point over the span is at
		// one end.
		ceil = math.Min(ceil, r.ceilingAt(to))
	}
	if top > ceil-0.05 {
		return fmt.Errorf("top at %g m reaches the ceiling (%g m there)", top, ceil)
	}
	return nil
}

// ceilingAt returns the height of the ceiling above x.
func (r Room) ceilingAt(x float64) float64 {
	s := r.Slope
	if s == nil {
		return r.Height
	}
	dist := r.Width/2 - x
	if s.Wall == LeftWall {
		dist = x + r.Width/2
	}
	if dist >= s.Run {
		return r.Height
	}
	return s.Knee + (r.Height-s.Knee)*math.Max(dist, 0)/s.Run
}
