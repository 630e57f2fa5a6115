package backend

import (
	"bytes"
	"context"
	"image"
	"image/jpeg"
	"slices"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/imagecheck"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

func jpegOf(t *testing.T, w, h int) ([]byte, imagecheck.Info) {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	info, err := imagecheck.Inspect(buf.Bytes(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), info
}

func TestMockUpscaleResamplesAndSaysSo(t *testing.T) {
	data, info := jpegOf(t, 300, 200)
	m := &Mock{Quality: 90, Budget: imagecheck.NewBudget(300*200 + 512*512)}
	res, err := m.Stage(context.Background(), Job{ID: "x", Image: data, Info: info, OutputLongSide: 150, UpscaleLongSide: 512})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(res.Image))
	if err != nil || res.Width != 512 || res.Height != 341 || cfg.Width != 512 || cfg.Height != 341 {
		t.Errorf("result %dx%d, image %+v %v; want 512x341", res.Width, res.Height, cfg, err)
	}
	if !slices.Equal(res.Warnings, []string{WarningUpscaleResampled}) || WarningUpscaleResampled != "upscale_resampled_only" {
		t.Errorf("warnings %v", res.Warnings)
	}
	plain, err := m.Stage(context.Background(), Job{ID: "x", Image: data, Info: info, OutputLongSide: 150})
	if err != nil || plain.Width != 150 || len(plain.Warnings) != 0 {
		t.Errorf("plain job: %dx%d %v %v", plain.Width, plain.Height, plain.Warnings, err)
	}
}

func TestSelfSendsTheUpscale(t *testing.T) {
	limits := func(hi uint32) *enginev1.InfoResponse {
		return &enginev1.InfoResponse{Limits: &enginev1.Limits{MinLongSide: 768, MaxLongSide: 1024, MaxUpscaleLongSide: hi}}
	}
	for _, tc := range []struct {
		name string
		up   int
		info *enginev1.InfoResponse
		want uint32
		err  string
	}{
		{"none", 0, limits(4096), 0, ""},
		{"within the limit", 2048, limits(4096), 2048, ""},
		{"at the limit", 4096, limits(4096), 4096, ""},
		{"rounded to 8", 2050, limits(4096), 2048, ""},
		{"limit unknown", 2048, nil, 2048, ""},
		{"engine cannot upscale", 2048, limits(0), 0, "the staging engine cannot upscale (ENGINE_MAX_UPSCALE_LONG_SIDE is 0)"},
		{"over the engine's limit", 4096, limits(3072), 0, "upscaling to 4096 px is configured, but the staging engine upscales to at most 3072 px"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := &enginev1.Result{Image: []byte{1}, Width: 2048, Height: 1536, Timings: &enginev1.Timings{DenoiseMs: 900, UpscaleMs: 1500, EncodeMs: 30}}
			f := &fakeEngine{info: tc.info, res: res}
			s, err := NewSelf(f, SelfOptions{})
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.Stage(context.Background(), Job{ID: "img", OutputLongSide: 1024, UpscaleLongSide: tc.up})
			if tc.err != "" {
				e := fault.From(err)
				if e.Code != fault.Internal || !strings.Contains(e.Message, tc.err) || f.got != nil {
					t.Fatalf("got %v (sent %v), want internal %q and nothing sent", err, f.got, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.got.GetUpscaleLongSide(); got != tc.want {
				t.Errorf("upscale_long_side %d, want %d", got, tc.want)
			}
			if out.Width != 2048 || out.Height != 1536 {
				t.Errorf("size %dx%d, want the engine's final 2048x1536", out.Width, out.Height)
			}
			var names []string
			for _, p := range out.Phases {
				names = append(names, p.Name)
			}
			if strings.Join(names, ",") != "decode,preprocess,denoise,vae_decode,upscale,encode" || out.Phases[4].Duration.Milliseconds() != 1500 {
				t.Errorf("phases %v", out.Phases)
			}
		})
	}
	// A job that was not upscaled reports no upscale phase.
	f := &fakeEngine{res: &enginev1.Result{Image: []byte{1}, Timings: &enginev1.Timings{DenoiseMs: 900}}}
	s, _ := NewSelf(f, SelfOptions{})
	out, err := s.Stage(context.Background(), Job{ID: "img"})
	if err != nil || len(out.Phases) != 5 || slices.ContainsFunc(out.Phases, func(p Phase) bool { return p.Name == "upscale" }) {
		t.Errorf("plain job phases %v %v", out.Phases, err)
	}
}
