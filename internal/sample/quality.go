package sample

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
)

// Size and JPEG quality of the photos of the quality set: small, so that
// the committed set stays small and renders quickly.
const (
	QualityWidth   = 768
	QualityHeight  = 512
	QualityQuality = 90
)

// Case is one photo of the quality set: a rendered room, what to stage in
// it, and what it tests.
type Case struct {
	ID       string // kebab-case; names the files
	RoomType string // a catalogue room type
	Style    string // a catalogue style
	Seed     uint32 // the seed of the render and of the staging run
	Notes    string // one sentence: what the case stresses
	Room     Room
	// Zone is the space that the case's mask opens to the model; nil
	// means the case has no mask.
	Zone *Zone
	// Optional request parameters; zero values leave the service's
	// defaults. The control kind is not one: it is the deployment's.
	Strength      float64
	GuidanceScale float64
}

// Photo renders the case's photo at the set's size.
func (c Case) Photo() (*image.RGBA, error) {
	return RenderRoom(c.room(), QualityWidth, QualityHeight)
}

// Mask renders the case's mask at the set's size; nil when it has none.
func (c Case) Mask() (*image.Gray, error) {
	if c.Zone == nil {
		return nil, nil
	}
	return RenderMask(c.room(), *c.Zone, QualityWidth, QualityHeight)
}

// room is the case's room, drawn with the case's seed.
func (c Case) room() Room {
	r := c.Room
	r.Seed = uint64(c.Seed)
	return r
}

// PhotoName and MaskName are the file names of a case in the set's folder.
func (c Case) PhotoName() string { return c.ID + ".jpg" }

// MaskName is the file name of the case's mask; empty when it has none.
func (c Case) MaskName() string {
	if c.Zone == nil {
		return ""
	}
	return c.ID + "-mask.png"
}

// EncodePhoto renders the case's photo and encodes it as the set's JPEG.
func (c Case) EncodePhoto() ([]byte, error) {
	m, err := c.Photo()
	if err != nil {
		return nil, fmt.Errorf("case %s: %w", c.ID, err)
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: QualityQuality}); err != nil {
		return nil, fmt.Errorf("case %s: %w", c.ID, err)
	}
	return b.Bytes(), nil
}

// EncodeMask renders the case's mask as an 8-bit grayscale PNG; nil when
// the case has none.
func (c Case) EncodeMask() ([]byte, error) {
	m, err := c.Mask()
	if err != nil || m == nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		return nil, fmt.Errorf("case %s: %w", c.ID, err)
	}
	return b.Bytes(), nil
}

// Manifest is the index of a quality set, as the evaluation harness reads
// it.
type Manifest struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Cases       []ManifestCase `json:"cases"`
}

// ManifestCase is one case in a Manifest.
type ManifestCase struct {
	ID            string  `json:"id"`
	Original      string  `json:"original"`
	Mask          string  `json:"mask,omitempty"`
	RoomType      string  `json:"room_type"`
	Style         string  `json:"style"`
	Seed          uint32  `json:"seed"`
	Notes         string  `json:"notes"`
	Strength      float64 `json:"strength,omitempty"`
	GuidanceScale float64 `json:"guidance_scale,omitempty"`
}

// QualityManifest returns the manifest of the bundled set.
func QualityManifest() Manifest {
	m := Manifest{
		Name:        "bundled",
		Description: "Empty rooms rendered by the project's own code, each built to stress one way virtual staging goes wrong.",
	}
	for _, c := range QualitySet() {
		m.Cases = append(m.Cases, ManifestCase{
			ID: c.ID, Original: c.PhotoName(), Mask: c.MaskName(),
			RoomType: c.RoomType, Style: c.Style, Seed: c.Seed, Notes: c.Notes,
			Strength: c.Strength, GuidanceScale: c.GuidanceScale,
		})
	}
	return m
}

// EncodeManifest returns m as the committed manifest.json: indented, with
// a final newline.
func EncodeManifest(m Manifest) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
