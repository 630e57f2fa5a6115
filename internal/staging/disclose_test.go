package staging

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/disclosure"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/telemetry"
)

// markingDiscloser stands for the disclosure package: it appends a marker
// to the image, and records what it was asked.
type markingDiscloser struct {
	mu     sync.Mutex
	labels []bool
	fail   bool
}

// Apply "decodes" to draw a label: it takes a pixel through reserve first.
func (d *markingDiscloser) Apply(data []byte, label bool, reserve func(int64) (func(), error)) ([]byte, error) {
	if label {
		release, err := reserve(1)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.labels = append(d.labels, label)
	if d.fail {
		return nil, errors.New("corrupt output")
	}
	return append(bytes.Clone(data), []byte("marked")...), nil
}

func discloseFixture(t *testing.T, d Discloser, labelDefault bool) (*Service, fixture) {
	t.Helper()
	f := newFixture(t, 0)
	opts := testOptions()
	opts.Discloser, opts.LabelDefault = d, labelDefault
	svc := New(f.store, NewSingle(f.be), catalog.Default(), opts, telemetry.NewStagingMetrics(prometheus.NewRegistry()), nil)
	return svc, f
}

// Every staged image passes through the discloser, with the request's
// label or the default, and what it returns is what is written.
func TestEveryStagedImageIsDisclosed(t *testing.T) {
	d := &markingDiscloser{}
	svc, f := discloseFixture(t, d, true)
	yes, no := true, false
	for _, tc := range []struct {
		id    string
		label *bool
		want  bool
	}{{"default", nil, true}, {"asked", &yes, true}, {"declined", &no, false}} {
		r := req(tc.id)
		r.Label = tc.label
		out, err := svc.Stage(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		staged, err := f.store.Get(t.Context(), out.StagedKey, 1<<20)
		if err != nil || !bytes.HasSuffix(staged, []byte("marked")) {
			t.Errorf("%s: the staged object is not the discloser's output (%v)", tc.id, err)
		}
	}
	if want := []bool{true, true, false}; !slices.Equal(d.labels, want) {
		t.Errorf("labels asked %v, want %v", d.labels, want)
	}
}

// The label is part of the job: a replay must not hand an unlabelled image
// to a request that asks for the label, nor the reverse.
func TestLabelIsPartOfTheJob(t *testing.T) {
	svc, _ := discloseFixture(t, &markingDiscloser{}, false)
	if _, err := svc.Stage(t.Context(), req("same")); err != nil {
		t.Fatal(err)
	}
	no := false
	r := req("same")
	r.Label = &no
	if out, err := svc.Stage(t.Context(), r); err != nil || !out.Replay {
		t.Errorf("label false where the default is false: %+v %v, want a replay", out, err)
	}
	yes := true
	r.Label = &yes
	if _, err := svc.Stage(t.Context(), r); fault.CodeOf(err) != fault.IdempotencyConflict {
		t.Errorf("the same image_id with a label: %v, want idempotency_conflict", err)
	}
}

// A discloser that fails leaves nothing written (no record, so a retry
// runs the job again), and the job fails as the service's own fault.
func TestDiscloserFailureWritesNothing(t *testing.T) {
	svc, f := discloseFixture(t, &markingDiscloser{fail: true}, false)
	_, err := svc.Stage(t.Context(), req("broken"))
	var fe *fault.Error
	if !errors.As(err, &fe) || fe.Code != fault.Internal {
		t.Fatalf("err = %v, want internal", err)
	}
	for _, key := range []string{"l/staged/broken.jpg", "l/staged/broken.jpg.json"} {
		if _, err := f.store.Get(t.Context(), key, 1<<20); err == nil {
			t.Errorf("%s was written by a failed job", key)
		}
	}
}

// orientedBackend answers with a JPEG stored on its side and an EXIF
// Orientation of 6 (turn 90° clockwise to view), as a camera or a provider
// may write one.
type orientedBackend struct{}

func (orientedBackend) Name() string { return "managed" }

func (orientedBackend) Stage(context.Context, backend.Job) (backend.Result, error) {
	stored := image.NewRGBA(image.Rect(0, 0, 40, 20)) // wide as stored
	for y := range 20 {
		for x := range 40 {
			if x < 10 {
				stored.Set(x, y, color.RGBA{255, 0, 0, 255}) // red on the stored left
			} else {
				stored.Set(x, y, color.RGBA{0, 0, 255, 255})
			}
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, stored, &jpeg.Options{Quality: 95}); err != nil {
		return backend.Result{}, err
	}
	// An APP1 Exif segment holding IFD0 with Orientation = 6, little-endian.
	exif := []byte("Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00")
	seg := append([]byte{0xFF, 0xE1, 0, byte(len(exif) + 2)}, exif...)
	data := append(append(append([]byte{}, buf.Bytes()[:2]...), seg...), buf.Bytes()[2:]...)
	return backend.Result{Image: data, ContentType: "image/jpeg", Width: 20, Height: 40, ModelRev: "m"}, nil
}

// An output that relies on its EXIF orientation is turned upright before
// the disclosure drops the EXIF, so it is not staged on its side.
func TestSidewaysOutputIsTurnedUpright(t *testing.T) {
	disc, err := disclosure.New("Virtually staged", 90, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, 0)
	opts := testOptions()
	opts.Discloser = disc
	svc := New(f.store, NewSingle(orientedBackend{}), catalog.Default(), opts, telemetry.NewStagingMetrics(prometheus.NewRegistry()), nil)
	out, err := svc.Stage(t.Context(), req("sideways"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := f.store.Get(t.Context(), out.StagedKey, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 20 || b.Dy() != 40 || out.Width != 20 || out.Height != 40 {
		t.Fatalf("staged %v, answer %dx%d; want 20x40 upright", b, out.Width, out.Height)
	}
	// Turned clockwise, the stored left edge (red) is now the top.
	if r, _, bl, _ := img.At(10, 2).RGBA(); r>>8 < 200 || bl>>8 > 60 {
		t.Errorf("the top is not red (r %d, b %d): the image was not turned as its EXIF said", r>>8, bl>>8)
	}
	if !bytes.Contains(data, []byte(disclosure.DigitalSourceType)) || bytes.Contains(data, []byte("Exif\x00\x00")) {
		t.Error("the upright image lacks the disclosure or kept the EXIF")
	}
}

// A label that waits for decode budget until the request's deadline ends
// the job with timeout, and nothing is written.
func TestDisclosureWaitingForBudgetTimesOut(t *testing.T) {
	budget := imagecheck.NewBudget(1)
	hold, err := budget.Acquire(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer hold()
	f := newFixture(t, 0)
	opts := testOptions()
	opts.Discloser, opts.DecodeBudget = &markingDiscloser{}, budget
	svc := New(f.store, NewSingle(f.be), catalog.Default(), opts, telemetry.NewStagingMetrics(prometheus.NewRegistry()), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	r := req("starved")
	yes := true
	r.Label = &yes
	if _, err := svc.Stage(ctx, r); fault.CodeOf(err) != fault.Timeout {
		t.Fatalf("err = %v, want timeout", err)
	}
	for _, key := range []string{"l/staged/starved.jpg", "l/staged/starved.jpg.json"} {
		if _, err := f.store.Get(t.Context(), key, 1<<20); err == nil {
			t.Errorf("%s was written by a job that timed out", key)
		}
	}
	// Its claim is gone too: once the budget is free, a retry runs.
	hold()
	if _, err := svc.Stage(t.Context(), r); err != nil {
		t.Errorf("retry: %v", err)
	}
}
