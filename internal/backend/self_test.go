package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vstage/vstage/internal/engine"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/testsupport"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeEngine answers Stage with a fixed result or error and records the
// request.
type fakeEngine struct {
	info *enginev1.InfoResponse
	res  *enginev1.Result
	err  error
	got  *enginev1.StageRequest
}

func (f *fakeEngine) Stage(ctx context.Context, req *enginev1.StageRequest) (*enginev1.Result, error) {
	f.got = req
	return f.res, f.err
}

func (f *fakeEngine) Info() *enginev1.InfoResponse { return f.info }

func engineStatus(c codes.Code, reason enginev1.FailureReason, msg string) error {
	st := status.New(c, msg)
	if reason != enginev1.FailureReason_FAILURE_REASON_UNSPECIFIED {
		var err error
		st, err = st.WithDetails(&errdetails.ErrorInfo{Domain: engine.Domain, Reason: reason.String()})
		if err != nil {
			panic(err)
		}
	}
	return st.Err()
}

func TestSelfBuildsTheRequest(t *testing.T) {
	limits := &enginev1.InfoResponse{Limits: &enginev1.Limits{MinLongSide: 768, MaxLongSide: 1024}}
	for _, tc := range []struct {
		in   int
		info *enginev1.InfoResponse
		want uint32
	}{
		{1000, limits, 1000}, {1023, limits, 1016}, {2000, limits, 1024}, {500, limits, 768},
		{0, limits, 0}, {-5, limits, 0}, {517, nil, 512},
	} {
		f := &fakeEngine{info: tc.info, res: &enginev1.Result{Image: []byte{1}, Width: 8, Height: 8, ModelRev: "rev", PeakGpuMemoryBytes: 42}}
		s, err := NewSelf(f, SelfOptions{Quality: 80})
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Stage(context.Background(), Job{
			ID: "img", Image: []byte("x"), Mask: []byte("m"), Prompt: "p", NegativePrompt: "n", Seed: 9,
			Strength: 0.5, GuidanceScale: 6, ControlNetConditioningScale: 0.8, OutputLongSide: tc.in,
		})
		if err != nil {
			t.Fatal(err)
		}
		g := f.got
		if g.GetOutputLongSide() != tc.want {
			t.Errorf("long side %d: got %d, want %d", tc.in, g.GetOutputLongSide(), tc.want)
		}
		if g.GetJobId() != "img" || g.GetSteps() != 30 || g.GetQuality() != 80 || g.GetSeed() != 9 ||
			g.GetControl() != enginev1.ControlKind_CONTROL_KIND_CANNY || g.GetOutputFormat() != enginev1.ImageFormat_IMAGE_FORMAT_JPEG ||
			g.GetStrength() != 0.5 || g.GetConditioningScale() != 0.8 || string(g.GetMask()) != "m" || g.GetPrompt() != "p" ||
			g.GetNegativePrompt() != "n" || g.GetGuidanceScale() != 6 {
			t.Errorf("request %v", g)
		}
		if res.ModelRev != "rev" || res.PeakGPUMemoryBytes != 42 || res.ContentType != "image/jpeg" || res.Width != 8 {
			t.Errorf("result %+v", res)
		}
	}
	if _, err := NewSelf(&fakeEngine{}, SelfOptions{Steps: -1}); err == nil {
		t.Error("negative steps accepted")
	}
	if _, err := NewSelf(&fakeEngine{}, SelfOptions{Quality: 101}); err == nil {
		t.Error("quality 101 accepted")
	}
}

func TestSelfMapsEngineFailures(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		code      fault.Code
		retryable bool
	}{
		{"bad image", engineStatus(codes.InvalidArgument, enginev1.FailureReason_FAILURE_REASON_BAD_IMAGE, "the image could not be decoded"), fault.InvalidInput, false},
		{"too large", engineStatus(codes.InvalidArgument, enginev1.FailureReason_FAILURE_REASON_IMAGE_TOO_LARGE, "over the cap"), fault.ImageTooLarge, false},
		{"oom", engineStatus(codes.ResourceExhausted, enginev1.FailureReason_FAILURE_REASON_OOM, "out of memory"), fault.OOM, true},
		{"engine deadline", engineStatus(codes.DeadlineExceeded, enginev1.FailureReason_FAILURE_REASON_DEADLINE, "the deadline passed"), fault.Timeout, true},
		{"not ready", engineStatus(codes.Unavailable, enginev1.FailureReason_FAILURE_REASON_NOT_READY, "loading"), fault.Unavailable, true},
		{"connection lost", status.Error(codes.Unavailable, "connection closed"), fault.Unavailable, true},
		{"engine died", fmt.Errorf("%w: died", engine.ErrUnavailable), fault.Unavailable, true},
		{"internal", engineStatus(codes.Internal, enginev1.FailureReason_FAILURE_REASON_INTERNAL, "failed"), fault.Internal, false},
		{"unknown", errors.New("boom"), fault.Internal, false},
	} {
		s, _ := NewSelf(&fakeEngine{err: tc.err}, SelfOptions{})
		_, err := s.Stage(context.Background(), Job{ID: "x"})
		fe := fault.From(err)
		if fe.Code != tc.code || fe.Retryable != tc.retryable || !errors.Is(err, tc.err) {
			t.Errorf("%s: got %v (retryable %v), want %s (retryable %v)", tc.name, err, fe.Retryable, tc.code, tc.retryable)
		}
	}
	s, _ := NewSelf(&fakeEngine{err: engineStatus(codes.InvalidArgument, enginev1.FailureReason_FAILURE_REASON_OUT_OF_RANGE, "steps must be in [1, 100]")}, SelfOptions{})
	_, err := s.Stage(context.Background(), Job{})
	if msg := fault.From(err).Message; msg != "the engine rejected the job (out_of_range): steps must be in [1, 100]" {
		t.Errorf("message %q", msg)
	}

	// Our own cancellation is the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, _ = NewSelf(&fakeEngine{err: status.Error(codes.Canceled, "context canceled")}, SelfOptions{})
	if _, err := s.Stage(ctx, Job{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// Self over a real supervised engine: a staged image, then the engine is
// killed mid-job and the client sees a retryable unavailable.
func TestSelfWithTheRealEngine(t *testing.T) {
	sup, err := engine.New(engine.Options{
		Python: testsupport.EnginePython(t),
		Module: "enginetest",
		Args: []string{"--min-long-side", "64", "--default-long-side", "128", "--max-long-side", "256",
			"--step-delay", "0.3"},
		StopGrace: 2 * time.Second, BackoffMin: 50 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	var pids []int
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("engine %d outlived the test", pid)
			}
		}
	}()
	waitReady := func() {
		t.Helper()
		for t0 := time.Now(); sup.Ready() != nil; time.Sleep(10 * time.Millisecond) {
			if time.Since(t0) > 20*time.Second {
				t.Fatalf("engine not ready: %v", sup.Ready())
			}
		}
		pids = append(pids, sup.Status().PID)
	}
	waitReady()

	s, err := NewSelf(sup, SelfOptions{Steps: 3})
	if err != nil {
		t.Fatal(err)
	}
	var src bytes.Buffer
	if err := jpeg.Encode(&src, image.NewGray(image.Rect(0, 0, 300, 200)), nil); err != nil {
		t.Fatal(err)
	}
	called := time.Now()
	res, err := s.Stage(context.Background(), Job{ID: "room", Image: src.Bytes(), Prompt: "p", Seed: 1,
		Strength: 0.5, GuidanceScale: 5, ControlNetConditioningScale: 1, OutputLongSide: 1001})
	took := time.Since(called)
	if err != nil {
		t.Fatal(err)
	}
	// Three steps of 0.3 s are the engine's own time, within the call's.
	if res.EngineTime < 900*time.Millisecond || res.EngineTime > took {
		t.Errorf("engine time %v, want at least the steps' 900ms and at most the call's %v", res.EngineTime, took)
	}
	// 1001 rounds down to 1000 and is clamped to the engine's 256.
	if res.Width != 256 || res.Height != 168 || res.ModelRev != "test-invert-v1" {
		t.Errorf("result %dx%d %q", res.Width, res.Height, res.ModelRev)
	}
	if _, err := jpeg.Decode(bytes.NewReader(res.Image)); err != nil {
		t.Errorf("not a JPEG: %v", err)
	}

	// The engine dies under a job: the client sees a retryable unavailable.
	pid := sup.Status().PID
	time.AfterFunc(300*time.Millisecond, func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	_, err = s.Stage(context.Background(), Job{ID: "killed", Image: src.Bytes(), Prompt: "p", Strength: 0.5, OutputLongSide: 128})
	if fe := fault.From(err); fe.Code != fault.Unavailable || !fe.Retryable {
		t.Errorf("Stage = %v, want a retryable unavailable", err)
	}
	waitReady()
}
