package disclosure

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"
)

// Label proportions, relative to the text's pixel size.
const (
	// labelScale is the text size as a share of the image's shorter side:
	// big enough to be seen on a listing's thumbnail, small enough not to
	// hide the room.
	labelScale = 0.035
	// minLabelPx is the smallest text size drawn while the image is wide
	// enough for it; only a narrower image gets smaller text.
	minLabelPx = 12
	// padX and padY are the box's padding around the text.
	padX = 0.6
	padY = 0.35
)

// drawLabel burns d.text into the bottom-left corner of img: white text in a
// semi-opaque dark box with rounded corners, a margin as large as the text
// away from the edges.
func (d *Discloser) drawLabel(img *image.RGBA) error {
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	px, err := labelSize(w, h, func(px float64) (float64, error) {
		face, err := d.faceAt(px)
		if err != nil {
			return 0, err
		}
		defer face.Close()
		return fixedToFloat(font.MeasureString(face, d.text)), nil
	})
	if err != nil {
		return err
	}
	face, err := d.faceAt(px)
	if err != nil {
		return err
	}
	defer face.Close()
	m := face.Metrics()
	ascent, descent := m.Ascent.Ceil(), m.Descent.Ceil()
	textW := font.MeasureString(face, d.text).Ceil()
	padW, padH := int(math.Round(padX*px)), int(math.Round(padY*px))
	boxW, boxH := textW+2*padW, ascent+descent+2*padH
	// A narrow or short image gives up the margin before the box is clipped.
	margin := max(0, min(int(math.Round(px)), (w-boxW)/2, (h-boxH)/2))
	box := image.Rect(margin, h-margin-boxH, margin+boxW, h-margin)
	mask := roundedRect{r: box, rad: padH}
	// Black at 60 % opacity keeps white text readable over a bright wall
	// without blacking out the corner.
	shade := image.NewUniform(color.NRGBA{A: 153})
	draw.DrawMask(img, box, shade, image.Point{}, mask, box.Min, draw.Over)
	dr := font.Drawer{
		Dst:  img,
		Src:  image.White,
		Face: face,
		Dot:  fixed.P(box.Min.X+padW, box.Min.Y+padH+ascent),
	}
	dr.DrawString(d.text)
	return nil
}

// fixedToFloat returns v in pixels.
func fixedToFloat(v fixed.Int26_6) float64 {
	return float64(v) / 64
}

// labelSize returns the text size in pixels for an image of size w×h, given
// measure, which returns the text's width at a size. The size shrinks below
// the usual one when the image is too narrow for the box and its margins.
func labelSize(w, h int, measure func(px float64) (float64, error)) (float64, error) {
	px := math.Max(minLabelPx, math.Round(labelScale*float64(min(w, h))))
	for {
		textW, err := measure(px)
		if err != nil {
			return 0, err
		}
		need := textW + 2*padX*px + 2*px // text, padding, margins
		if need <= float64(w) || px <= 1 {
			return px, nil
		}
		// Width grows about linearly with size; the loop absorbs hinting.
		px = math.Max(1, math.Min(px-1, math.Floor(px*float64(w)/need)))
	}
}

// faceAt returns a face of d's font at px pixels; the caller closes it.
func (d *Discloser) faceAt(px float64) (font.Face, error) {
	face, err := opentype.NewFace(d.font, &opentype.FaceOptions{Size: px, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		return nil, fmt.Errorf("disclosure: making a %g px label face: %w", px, err)
	}
	return face, nil
}

// roundedRect is an alpha mask: opaque inside r, whose corners are rounded
// with radius rad, transparent outside.
type roundedRect struct {
	r   image.Rectangle
	rad int
}

func (m roundedRect) ColorModel() color.Model { return color.AlphaModel }

func (m roundedRect) Bounds() image.Rectangle { return m.r }

func (m roundedRect) At(x, y int) color.Color {
	if !(image.Point{x, y}).In(m.r) {
		return color.Transparent
	}
	// Distance from the nearest corner's centre, for points in a corner.
	cx := min(max(x, m.r.Min.X+m.rad), m.r.Max.X-1-m.rad)
	cy := min(max(y, m.r.Min.Y+m.rad), m.r.Max.Y-1-m.rad)
	dx, dy := x-cx, y-cy
	if dx*dx+dy*dy > m.rad*m.rad {
		return color.Transparent
	}
	return color.Opaque
}
