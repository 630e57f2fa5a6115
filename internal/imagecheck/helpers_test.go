package imagecheck

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"testing"
)

// This file builds test inputs by hand: images with chosen metadata, and
// headers that lie about their size.

func encodeJPEG(t testing.TB, m image.Image, quality int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: quality}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// jpegSegment returns a marker segment with its length field.
func jpegSegment(marker byte, payload []byte) []byte {
	seg := []byte{0xFF, marker, 0, 0}
	binary.BigEndian.PutUint16(seg[2:], uint16(len(payload)+2))
	return append(seg, payload...)
}

// insertJPEGSegments puts segments right after SOI, where writers put
// application data.
func insertJPEGSegments(data []byte, segs ...[]byte) []byte {
	out := append([]byte{}, data[:2]...)
	for _, s := range segs {
		out = append(out, s...)
	}
	return append(out, data[2:]...)
}

func withJPEGExif(data, tiff []byte) []byte {
	return insertJPEGSegments(data, jpegSegment(0xE1, append([]byte("Exif\x00\x00"), tiff...)))
}

// pngChunk returns a chunk with its length and CRC.
func pngChunk(typ string, payload []byte) []byte {
	c := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	c = append(c, typ...)
	c = append(c, payload...)
	return binary.BigEndian.AppendUint32(c, crc32.ChecksumIEEE(c[4:]))
}

// insertPNGChunks puts chunks right after IHDR (signature 8 bytes, IHDR 25).
func insertPNGChunks(data []byte, chunks ...[]byte) []byte {
	out := append([]byte{}, data[:33]...)
	for _, c := range chunks {
		out = append(out, c...)
	}
	return append(out, data[33:]...)
}

// setPNGSize rewrites the IHDR size and its CRC.
func setPNGSize(data []byte, w, h uint32) []byte {
	out := append([]byte{}, data...)
	binary.BigEndian.PutUint32(out[16:], w)
	binary.BigEndian.PutUint32(out[20:], h)
	binary.BigEndian.PutUint32(out[29:], crc32.ChecksumIEEE(out[12:29]))
	return out
}

// setJPEGSize rewrites the size in the first frame header.
func setJPEGSize(t testing.TB, data []byte, w, h uint16) []byte {
	t.Helper()
	out := append([]byte{}, data...)
	for i := 2; i+4 <= len(out); {
		marker := out[i+1]
		n := int(binary.BigEndian.Uint16(out[i+2:]))
		if isSOF(marker) {
			binary.BigEndian.PutUint16(out[i+5:], h)
			binary.BigEndian.PutUint16(out[i+7:], w)
			return out
		}
		i += 2 + n
	}
	t.Fatal("no frame header")
	return nil
}

// byteOrder is what binary.LittleEndian and binary.BigEndian both are.
type byteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

// tiffOrientation returns Exif TIFF data whose IFD0 holds an unrelated tag
// and then the orientation, in the given byte order.
func tiffOrientation(o uint16, order byteOrder) []byte {
	var b []byte
	if order == binary.LittleEndian {
		b = []byte("II*\x00")
	} else {
		b = []byte("MM\x00*")
	}
	b = order.AppendUint32(b, 8)
	b = order.AppendUint16(b, 2)
	// ImageWidth, LONG, 1, 4000: a tag before the one that matters.
	b = order.AppendUint16(b, 0x0100)
	b = order.AppendUint16(b, 4)
	b = order.AppendUint32(b, 1)
	b = order.AppendUint32(b, 4000)
	b = order.AppendUint16(b, tagOrientation)
	b = order.AppendUint16(b, 3)
	b = order.AppendUint32(b, 1)
	b = order.AppendUint16(b, o)
	b = order.AppendUint16(b, 0)
	return order.AppendUint32(b, 0) // no next IFD
}

// bitWriter writes the least significant bit first, as VP8L reads.
type bitWriter struct {
	buf   []byte
	acc   uint64
	nbits uint
}

func (w *bitWriter) write(v uint32, n uint) {
	w.acc |= uint64(v) << w.nbits
	w.nbits += n
	for w.nbits >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.nbits -= 8
	}
}

func (w *bitWriter) bytes() []byte {
	if w.nbits > 0 {
		return append(w.buf, byte(w.acc))
	}
	return w.buf
}

// encodeVP8L writes a lossless WebP bitstream for images with at most two
// values per channel, using only "simple" prefix codes: enough for the flat
// test patterns here, and small enough to verify by eye.
func encodeVP8L(t testing.TB, m image.Image) []byte {
	t.Helper()
	b := m.Bounds()
	var w bitWriter
	w.write(0x2f, 8)
	w.write(uint32(b.Dx()-1), 14)
	w.write(uint32(b.Dy()-1), 14)
	w.write(1, 1) // alpha hint
	w.write(0, 3) // version
	w.write(0, 1) // no transform
	w.write(0, 1) // no colour cache
	w.write(0, 1) // no meta prefix codes

	// Channel order in the bitstream: green, red, blue, alpha.
	var symbols [4][]uint32
	px := func(x, y int) [4]uint32 {
		c := color.NRGBAModel.Convert(m.At(x, y)).(color.NRGBA)
		return [4]uint32{uint32(c.G), uint32(c.R), uint32(c.B), uint32(c.A)}
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			p := px(x, y)
			for ch := range 4 {
				if !containsU32(symbols[ch], p[ch]) {
					symbols[ch] = append(symbols[ch], p[ch])
				}
			}
		}
	}
	for ch := range 4 {
		s := symbols[ch]
		if len(s) > 2 {
			t.Fatalf("encodeVP8L: channel %d has %d values; at most 2 allowed", ch, len(s))
		}
		w.write(1, 1) // simple code
		w.write(uint32(len(s)-1), 1)
		w.write(1, 1) // 8-bit first symbol
		for _, v := range s {
			w.write(v, 8)
		}
	}
	// Distance code: one symbol, 0, never used.
	w.write(1, 1)
	w.write(0, 1)
	w.write(0, 1)
	w.write(0, 1)

	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			p := px(x, y)
			for ch := range 4 {
				if len(symbols[ch]) == 2 {
					if p[ch] == symbols[ch][0] {
						w.write(0, 1)
					} else {
						w.write(1, 1)
					}
				}
			}
		}
	}
	return w.bytes()
}

func containsU32(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func riffChunkBytes(fourCC string, payload []byte) []byte {
	c := append([]byte(fourCC), binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))...)
	c = append(c, payload...)
	if len(payload)%2 == 1 {
		c = append(c, 0)
	}
	return c
}

func riffFile(chunks ...[]byte) []byte {
	var body []byte
	for _, c := range chunks {
		body = append(body, c...)
	}
	out := append([]byte("RIFF"), binary.LittleEndian.AppendUint32(nil, uint32(4+len(body)))...)
	out = append(out, "WEBP"...)
	return append(out, body...)
}

// vp8x returns the extended-format header chunk.
func vp8x(flags byte, w, h int) []byte {
	p := make([]byte, 10)
	p[0] = flags
	p[4], p[5], p[6] = byte(w-1), byte((w-1)>>8), byte((w-1)>>16)
	p[7], p[8], p[9] = byte(h-1), byte((h-1)>>8), byte((h-1)>>16)
	return riffChunkBytes("VP8X", p)
}

// encodeWebP wraps a VP8L bitstream, in the extended format with an EXIF
// chunk (and any extra chunks) when exif is not nil.
func encodeWebP(t testing.TB, m image.Image, exif []byte, extra ...[]byte) []byte {
	t.Helper()
	bits := riffChunkBytes("VP8L", encodeVP8L(t, m))
	if exif == nil && extra == nil {
		return riffFile(bits)
	}
	b := m.Bounds()
	const alphaBit, exifBit = 0x10, 0x08
	chunks := [][]byte{vp8x(alphaBit|exifBit, b.Dx(), b.Dy())}
	chunks = append(chunks, extra...)
	chunks = append(chunks, bits)
	if exif != nil {
		chunks = append(chunks, riffChunkBytes("EXIF", exif))
	}
	return riffFile(chunks...)
}

// lossyWebPHeader returns a WebP whose VP8 key frame header declares w×h,
// followed by no real frame data: enough for a header check.
func lossyWebPHeader(w, h int) []byte {
	p := []byte{0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0, 0, 0, 0}
	binary.LittleEndian.PutUint16(p[6:], uint16(w))
	binary.LittleEndian.PutUint16(p[8:], uint16(h))
	p = append(p, make([]byte, 32)...)
	return riffFile(riffChunkBytes("VP8 ", p))
}
