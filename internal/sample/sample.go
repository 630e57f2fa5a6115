// Package sample holds the demo photo that vstage ships: an empty living
// room, rendered by code in this package so the project owns every pixel.
//
// The picture is committed as a JPEG and embedded; Render and Encode make it
// again from scratch, and a test checks that the two agree byte for byte.
package sample

import (
	"bytes"
	_ "embed"
	"image/jpeg"
)

//go:generate go run ./cmd/render -o empty_living_room.jpg

// Key is the storage key the demo photo is seeded under.
const Key = "demo/empty_living_room.jpg"

// Size and quality of the committed photo.
const (
	Width   = 1536
	Height  = 1024
	Quality = 90
)

//go:embed empty_living_room.jpg
var photo []byte

// JPEG returns the demo photo. The slice is shared; callers must not modify
// it.
func JPEG() []byte { return photo }

// Encode renders the demo photo at its committed size and encodes it as the
// committed JPEG.
func Encode() ([]byte, error) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, Render(Width, Height), &jpeg.Options{Quality: Quality}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
