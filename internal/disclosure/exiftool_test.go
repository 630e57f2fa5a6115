package disclosure

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestExifTool checks the output as a listing platform's reader sees it:
// ExifTool must find the digital source type in the IPTC extension schema,
// and no other tag beyond the facts about the file itself.
func TestExifTool(t *testing.T) {
	exiftool, err := exec.LookPath("exiftool")
	if err != nil {
		t.Fatal("exiftool is not installed; run `make servers` (mk/servers.sh installs it)")
	}
	d := newDiscloser(t)
	in := withMetadata(encodeJPEG(t, testImage(64, 48)))

	// The check below must be able to fail: on the input it finds the
	// comment and the GPS position.
	extra, _ := unexpectedTags(t, exiftool, in)
	for _, want := range []string{"File:Comment", "GPS:GPSLatitude", "JFIF:JFIFVersion"} {
		if !slices.ContainsFunc(extra, func(s string) bool { return strings.HasPrefix(s, want+"=") }) {
			t.Errorf("exiftool did not report %s in the input; it reported %q", want, extra)
		}
	}

	for name, label := range map[string]bool{"copied": false, "labelled": true} {
		t.Run(name, func(t *testing.T) {
			out, err := d.Apply(in, label, nil)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			extra, source := unexpectedTags(t, exiftool, out)
			for _, tag := range extra {
				t.Errorf("exiftool found %s", tag)
			}
			if source != DigitalSourceType {
				t.Errorf("XMP-iptcExt:DigitalSourceType = %q; want %s", source, DigitalSourceType)
			}
		})
	}
}

// unexpectedTags runs `exiftool -j -a -G1 -s` on data and returns, as
// "group:tag=value", every tag but XMP-iptcExt:DigitalSourceType and the
// facts about the file (groups ExifTool, System, File and Composite), and
// the value of XMP-iptcExt:DigitalSourceType. ExifTool files a COM
// segment and the EXIF byte order under File, so those count as unexpected.
func unexpectedTags(t *testing.T, exiftool string, data []byte) (extra []string, source string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.jpg")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	js, err := exec.CommandContext(t.Context(), exiftool, "-j", "-a", "-G1", "-s", path).Output()
	if err != nil {
		t.Fatalf("exiftool: %v", err)
	}
	var files []map[string]any
	if err := json.Unmarshal(js, &files); err != nil || len(files) != 1 {
		t.Fatalf("exiftool printed %s (%v)", js, err)
	}
	for tag, v := range files[0] {
		group, _, _ := strings.Cut(tag, ":")
		switch {
		case tag == "XMP-iptcExt:DigitalSourceType":
			source, _ = v.(string)
		case tag == "File:Comment" || tag == "File:ExifByteOrder":
			extra = append(extra, tag+"="+jsonString(v))
		case tag == "SourceFile", group == "ExifTool", group == "System", group == "File", group == "Composite":
		default:
			extra = append(extra, tag+"="+jsonString(v))
		}
	}
	slices.Sort(extra)
	return extra, source
}

// jsonString returns v as ExifTool's JSON gave it, for messages.
func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
