package telemetry

import "testing"

func TestSizeLabel(t *testing.T) {
	for _, tc := range []struct {
		w, h int
		want string
	}{
		{1024, 1024, "1024"},
		{1024, 768, "1024"}, // 887 px of side: with the 1024 ones
		{768, 512, "768"},
		{512, 512, "512"},
		{513, 512, "768"},
		{1, 1, "256"},
		{20000, 20000, "4096"}, // capped, so the label stays bounded
	} {
		if got := SizeLabel(float64(tc.w * tc.h)); got != tc.want {
			t.Errorf("%dx%d: %s, want %s", tc.w, tc.h, got, tc.want)
		}
	}
}
