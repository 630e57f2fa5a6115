package disclosure

import (
	"bytes"
	"errors"
	"fmt"
)

// JPEG marker codes (ITU T.81, table B.1) that the rewrite treats apart.
const (
	markerSOF0  = 0xC0 // baseline DCT frame
	markerDHT   = 0xC4
	markerJPG   = 0xC8
	markerDAC   = 0xCC
	markerDNL   = 0xDC
	markerDRI   = 0xDD
	markerDQT   = 0xDB
	markerRST0  = 0xD0
	markerRST7  = 0xD7
	markerSOI   = 0xD8
	markerEOI   = 0xD9
	markerSOS   = 0xDA
	markerAPP0  = 0xE0
	markerAPP1  = 0xE1
	markerAPP14 = 0xEE
	markerAPP15 = 0xEF
	markerCOM   = 0xFE
	markerTEM   = 0x01
)

// errTruncated is wrapped by the errors for JPEG data that ends too soon.
var errTruncated = errors.New("truncated JPEG")

// jpegLayout is what the rewrite keeps of a JPEG, and what it needs to know
// to decide whether keeping it unchanged keeps its colours.
type jpegLayout struct {
	// kept are the parts copied to the output in order: whole segments,
	// markers included, and the entropy-coded data after each SOS.
	kept [][]byte
	// frame is the SOFn marker; componentIDs are its components' ids.
	frame        byte
	componentIDs []byte
	// adobe is whether an Adobe APP14 segment was seen, and transform its
	// colour transform (0 none, 1 YCbCr, 2 YCCK).
	adobe     bool
	transform byte
}

// isJPEG reports whether data starts like a JPEG (SOI, then a marker).
func isJPEG(data []byte) bool {
	return len(data) >= 3 && data[0] == 0xFF && data[1] == markerSOI && data[2] == 0xFF
}

// parseJPEG splits a JPEG into the parts that the rewrite keeps: the frame,
// the scans and the tables a decoder needs (DQT, DHT, DAC, DRI, DNL). Every
// other segment is dropped, APPn and COM, and also the reserved and JPGn
// markers, which a decoder skips and which could carry metadata all the
// same; so are the standalone markers outside scans, the fill bytes before
// markers, and anything after EOI.
func parseJPEG(data []byte) (*jpegLayout, error) {
	if len(data) < 2 || data[0] != 0xFF || data[1] != markerSOI {
		return nil, errors.New("disclosure: not a JPEG (no SOI marker)")
	}
	l := &jpegLayout{}
	scans := 0
	for i := 2; ; {
		m, start, next, err := readMarker(data, i)
		if err != nil {
			return nil, err
		}
		switch {
		case m == markerEOI:
			if scans == 0 {
				return nil, errors.New("disclosure: JPEG ends before its first scan")
			}
			return l, nil
		case m == markerSOI || m == 0x00:
			return nil, fmt.Errorf("disclosure: unexpected JPEG marker 0x%02X at offset %d", m, start)
		case m == markerTEM || (m >= markerRST0 && m <= markerRST7):
			// No length and nothing to keep.
			i = next
			continue
		}
		end, err := segmentEnd(data, next)
		if err != nil {
			return nil, fmt.Errorf("disclosure: JPEG segment 0x%02X at offset %d: %w", m, start, err)
		}
		seg := data[start:end]
		payload := data[next+2 : end]
		i = end
		switch {
		case m >= markerAPP0 && m <= markerAPP15:
			if m == markerAPP14 && len(payload) >= 12 && bytes.HasPrefix(payload, []byte("Adobe")) {
				l.adobe, l.transform = true, payload[11]
			}
		case m == markerCOM:
		case isSOF(m):
			if l.frame != 0 {
				return nil, fmt.Errorf("disclosure: second JPEG frame header at offset %d", start)
			}
			if len(payload) < 6 || int(payload[5]) == 0 || len(payload) != 6+3*int(payload[5]) {
				return nil, fmt.Errorf("disclosure: malformed JPEG frame header at offset %d", start)
			}
			l.frame = m
			for c := 0; c < int(payload[5]); c++ {
				l.componentIDs = append(l.componentIDs, payload[6+3*c])
			}
			l.kept = append(l.kept, seg)
		case m == markerSOS:
			if l.frame == 0 {
				return nil, fmt.Errorf("disclosure: JPEG scan before a frame header at offset %d", start)
			}
			if len(payload) < 1 || int(payload[0]) == 0 || len(payload) != 4+2*int(payload[0]) {
				return nil, fmt.Errorf("disclosure: malformed JPEG scan header at offset %d", start)
			}
			stop, err := scanEnd(data, end)
			if err != nil {
				return nil, fmt.Errorf("disclosure: JPEG scan at offset %d: %w", start, err)
			}
			l.kept = append(l.kept, seg, data[end:stop])
			scans++
			i = stop
		case m == markerDQT || m == markerDHT || m == markerDAC || m == markerDRI || m == markerDNL:
			l.kept = append(l.kept, seg)
		}
	}
}

// readMarker reads the marker at data[i], after any 0xFF fill bytes. It
// returns the marker code, the offset of the 0xFF just before the code, and
// the offset after the code.
func readMarker(data []byte, i int) (m byte, start, next int, err error) {
	if i >= len(data) {
		return 0, 0, 0, fmt.Errorf("disclosure: %w: no EOI marker", errTruncated)
	}
	if data[i] != 0xFF {
		return 0, 0, 0, fmt.Errorf("disclosure: JPEG has byte 0x%02X where a marker belongs, at offset %d", data[i], i)
	}
	for i+1 < len(data) && data[i+1] == 0xFF {
		i++
	}
	if i+1 >= len(data) {
		return 0, 0, 0, fmt.Errorf("disclosure: %w: ends inside a marker", errTruncated)
	}
	return data[i+1], i, i + 2, nil
}

// segmentEnd returns the offset after the segment whose length field is at
// data[at].
func segmentEnd(data []byte, at int) (int, error) {
	if at+2 > len(data) {
		return 0, fmt.Errorf("%w: no length", errTruncated)
	}
	n := int(data[at])<<8 | int(data[at+1])
	if n < 2 {
		return 0, fmt.Errorf("length %d is under 2", n)
	}
	if at+n > len(data) {
		return 0, fmt.Errorf("%w: length %d runs past the end", errTruncated, n)
	}
	return at + n, nil
}

// scanEnd returns the offset of the first marker after the entropy-coded
// data that starts at data[at]: not a stuffed 0xFF00, not a restart marker,
// not fill.
func scanEnd(data []byte, at int) (int, error) {
	for i := at; ; {
		j := bytes.IndexByte(data[i:], 0xFF)
		if j < 0 {
			return 0, fmt.Errorf("%w: no marker after the entropy-coded data", errTruncated)
		}
		i += j
		if i+1 >= len(data) {
			return 0, fmt.Errorf("%w: ends inside the entropy-coded data", errTruncated)
		}
		if c := data[i+1]; c == 0x00 || (c >= markerRST0 && c <= markerRST7) {
			i += 2
			continue
		}
		// A marker, or fill bytes before one: readMarker reads from here.
		return i, nil
	}
}

// isSOF reports whether m starts a frame header: SOF0 to SOF15 but for DHT,
// JPG and DAC, which share the range.
func isSOF(m byte) bool {
	return m >= markerSOF0 && m <= 0xCF && m != markerDHT && m != markerJPG && m != markerDAC
}

// copyable reports whether the kept parts decode to the same colours without
// the dropped APPn segments, and whether the result is a baseline JPEG.
// Without JFIF or Adobe segments a decoder takes three components as YCbCr,
// unless their ids are 'R', 'G', 'B'; four are CMYK or YCCK only by APP14.
func (l *jpegLayout) copyable() bool {
	if l.frame != markerSOF0 {
		return false
	}
	switch len(l.componentIDs) {
	case 1:
		return true
	case 3:
		rgbIDs := bytes.Equal(l.componentIDs, []byte("RGB"))
		return !rgbIDs && (!l.adobe || l.transform == 1)
	}
	return false
}

// assemble returns the JPEG made of SOI, the XMP segment, the kept parts and
// EOI.
func (l *jpegLayout) assemble() []byte {
	xmp := xmpSegment()
	n := 4 + len(xmp)
	for _, p := range l.kept {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = append(out, 0xFF, markerSOI)
	out = append(out, xmp...)
	for _, p := range l.kept {
		out = append(out, p...)
	}
	return append(out, 0xFF, markerEOI)
}
