package imagecheck_test

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/png"

	"github.com/vstage/vstage/internal/imagecheck"
)

func Example() {
	var buf bytes.Buffer
	_ = png.Encode(&buf, image.NewGray(image.Rect(0, 0, 3000, 2000)))
	upload := buf.Bytes()

	// Check the header first: it costs nothing, even for a hostile file.
	info, err := imagecheck.Inspect(upload, 40_000_000)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(info.Format, info.Width, info.Height)

	res, err := imagecheck.Normalize(upload, imagecheck.NormalizeOptions{MaxPixels: 40_000_000, LongSide: 1024})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Width, res.Height)

	_, err = imagecheck.Inspect([]byte("GIF89a..."), 40_000_000)
	fmt.Println(errors.Is(err, imagecheck.ErrUnsupported))
	// Output:
	// png 3000 2000
	// 1024 683
	// true
}
