package sample

import (
	"fmt"
	"image"
	"image/color"
)

// Zone is the space where furniture would stand: a box on the floor from
// x = Left to Right and z = Near to Far, Top metres high.
type Zone struct {
	Left, Right, Near, Far, Top float64
}

// RenderMask draws the furniture mask of room for the zone, w×h pixels, in
// the same view as RenderRoom: white (255) where the view into the zone
// ends on the floor or a wall, so a model may paint furniture there, and
// black elsewhere. Windows, doorways and the ceiling stay black even behind
// the zone. One ray through each pixel's centre keeps the mask binary.
func RenderMask(room Room, z Zone, w, h int) (*image.Gray, error) {
	if err := check(room, w, h); err != nil {
		return nil, err
	}
	c := room.Camera
	if !(z.Left < z.Right && z.Near < z.Far && z.Top > 0) {
		return nil, fmt.Errorf("zone %+v: an empty box", z)
	}
	if c.X >= z.Left && c.X <= z.Right && c.Z >= z.Near && c.Z <= z.Far && c.Y <= z.Top {
		return nil, fmt.Errorf("zone %+v: the camera is inside it", z)
	}
	m := image.NewGray(image.Rect(0, 0, w, h))
	s := newScene(room, w, h)
	lo, hi := vec{z.Left, 0, z.Near}, vec{z.Right, z.Top, z.Far}
	for y := range h {
		for x := range w {
			d := s.ray(float64(x)+0.5, float64(y)+0.5)
			if _, _, in := enter(s.cam, d, lo, hi); !in {
				continue
			}
			if k := s.hit(s.cam, d).kind; k == onFloor || k == onWall {
				m.SetGray(x, y, color.Gray{Y: 255})
			}
		}
	}
	return m, nil
}
