// Command qualityset renders the bundled quality set: the photos, the masks
// and the manifest that the evaluation harness reads.
//
//	go run ./internal/sample/cmd/qualityset -o quality/sets/bundled
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vstage/vstage/internal/sample"
)

func main() { os.Exit(run()) }

func run() int {
	out := flag.String("o", "quality/sets/bundled", "output `folder`")
	flag.Parse()
	if err := write(*out); err != nil {
		fmt.Fprintln(os.Stderr, "qualityset:", err)
		return 1
	}
	return 0
}

func write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, c := range sample.QualitySet() {
		photo, err := c.EncodePhoto()
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, c.PhotoName()), photo); err != nil {
			return err
		}
		mask, err := c.EncodeMask()
		if err != nil {
			return err
		}
		if mask != nil {
			if err := writeFile(filepath.Join(dir, c.MaskName()), mask); err != nil {
				return err
			}
		}
		fmt.Fprintln(os.Stderr, "wrote", c.ID)
	}
	m, err := sample.EncodeManifest(sample.QualityManifest())
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "manifest.json"), m)
}

// writeFile writes beside the target and renames, so an interrupted run
// never leaves a half-written file in the set.
func writeFile(name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
