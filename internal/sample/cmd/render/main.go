// Command render draws the demo photo of an empty living room and writes it
// as the JPEG that package sample embeds. With an output name ending in
// ".png" it writes a lossless preview instead.
//
//	go run ./internal/sample/cmd/render -o internal/sample/empty_living_room.jpg
package main

import (
	"bytes"
	"flag"
	"fmt"
	"image/png"
	"os"
	"strings"

	"github.com/vstage/vstage/internal/sample"
)

func main() { os.Exit(run()) }

func run() int {
	out := flag.String("o", "empty_living_room.jpg", "output `file`")
	flag.Parse()
	if err := write(*out); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		return 1
	}
	return 0
}

func write(name string) error {
	var data []byte
	if strings.HasSuffix(name, ".png") {
		var b bytes.Buffer
		if err := png.Encode(&b, sample.Render(sample.Width, sample.Height)); err != nil {
			return err
		}
		data = b.Bytes()
	} else {
		var err error
		if data, err = sample.Encode(); err != nil {
			return err
		}
	}
	// Write beside the target and rename, so an interrupted run never
	// leaves a half-written photo to be embedded.
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
