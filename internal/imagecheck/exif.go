package imagecheck

import "encoding/binary"

// exifPrefix starts the Exif APP1 segment of a JPEG, and some writers put it
// in front of the TIFF data of WebP and PNG too.
var exifPrefix = []byte("Exif\x00\x00")

const tagOrientation = 0x0112

// orientationOrDefault returns the orientation recorded in Exif data (a TIFF
// structure), or 1 when it is absent or unreadable. Metadata is advisory: a
// malformed Exif block leaves the image as stored rather than rejecting it.
func orientationOrDefault(tiff []byte) int {
	if o, ok := exifOrientation(tiff); ok {
		return o
	}
	return 1
}

// exifOrientation finds the Orientation tag in IFD0 of Exif TIFF data.
func exifOrientation(tiff []byte) (int, bool) {
	if len(tiff) >= len(exifPrefix) && string(tiff[:len(exifPrefix)]) == string(exifPrefix) {
		tiff = tiff[len(exifPrefix):]
	}
	if len(tiff) < 8 {
		return 0, false
	}
	var order binary.ByteOrder
	switch string(tiff[:4]) {
	case "II*\x00":
		order = binary.LittleEndian
	case "MM\x00*":
		order = binary.BigEndian
	default:
		return 0, false
	}
	ifd := int64(order.Uint32(tiff[4:]))
	if ifd < 8 || ifd+2 > int64(len(tiff)) {
		return 0, false
	}
	n := int64(order.Uint16(tiff[ifd:]))
	entries := tiff[ifd+2:]
	if n*12 > int64(len(entries)) {
		// A count that overruns the data is tolerated up to the last
		// whole entry; the tag may still be among them.
		n = int64(len(entries)) / 12
	}
	for k := range n {
		e := entries[k*12 : k*12+12]
		if order.Uint16(e) != tagOrientation {
			continue
		}
		typ, count := order.Uint16(e[2:]), order.Uint32(e[4:])
		if count != 1 {
			return 0, false
		}
		var v uint32
		switch typ {
		case 3: // SHORT, left-justified in the value field
			v = uint32(order.Uint16(e[8:]))
		case 4: // LONG, seen from a few writers
			v = order.Uint32(e[8:])
		default:
			return 0, false
		}
		if v < 1 || v > 8 {
			return 0, false
		}
		return int(v), true
	}
	return 0, false
}
