package managed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/jpeg"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/fault"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quick are options with every wait short enough for a unit test.
func quick(f *fakeProvider) Options {
	return Options{
		BaseURL: f.srv.URL, Version: "v123", Token: testToken,
		HTTPClient:   f.srv.Client(),
		CallTimeout:  time.Second,
		PollInterval: 2 * time.Millisecond,
		BackoffBase:  time.Millisecond, BackoffMax: 5 * time.Millisecond,
		BreakerOpenTimeout: 50 * time.Millisecond,
	}
}

func newBackend(t *testing.T, o Options) *Backend {
	t.Helper()
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testJob(t *testing.T) backend.Job {
	return backend.Job{
		ID: "img-42", Image: testPNG(t, 16, 12), Prompt: "a cozy living room", NegativePrompt: "blurry",
		Seed: 7, Strength: 0.6, GuidanceScale: 7.5, ControlNetConditioningScale: 0.8, OutputLongSide: 1024,
	}
}

func stage(t *testing.T, b *Backend, timeout time.Duration) (backend.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	return b.Stage(ctx, testJob(t))
}

func wantFault(t *testing.T, err error, code fault.Code, retryable bool) *fault.Error {
	t.Helper()
	var fe *fault.Error
	if !errors.As(err, &fe) || fe.Code != code || fe.Retryable != retryable {
		t.Fatalf("error %v, want %s (retryable %v)", err, code, retryable)
	}
	return fe
}

func TestHappyPath(t *testing.T) {
	f := newFake(t)
	f.pollsToEnd = 2
	job := testJob(t)
	job.Mask = testPNG(t, 16, 12)
	res, err := newBackend(t, quick(f)).Stage(t.Context(), job)
	if err != nil {
		t.Fatalf("Stage: %v (%s)", err, f)
	}
	if res.Width != 32 || res.Height != 24 || res.ContentType != "image/png" || res.ModelRev != "managed:v123" || !bytes.Equal(res.Image, f.image) {
		t.Fatalf("result %dx%d %s %s", res.Width, res.Height, res.ContentType, res.ModelRev)
	}
	if res.BilledTime != 0 {
		t.Errorf("billed time %v from a prediction that reports none", res.BilledTime)
	}
	if f.creates.Load() != 1 || f.polls.Load() != 2 || f.downloads.Load() != 1 {
		t.Fatalf("calls: %s", f)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last.auth != "Bearer "+testToken || f.last.key != "img-42" || f.last.prefer != "" {
		t.Fatalf("headers: key %q prefer %q", f.last.key, f.last.prefer)
	}
	in, _ := f.last.body["input"].(map[string]any)
	if f.last.body["version"] != "v123" || in["prompt"] != job.Prompt || in["negative_prompt"] != "blurry" ||
		in["seed"] != 7.0 || in["prompt_strength"] != 0.6 || in["guidance_scale"] != 7.5 || in["condition_scale"] != 0.8 {
		t.Fatalf("create body %v", f.last.body)
	}
	for _, k := range []string{"image", "mask"} {
		if s, _ := in[k].(string); !strings.HasPrefix(s, "data:image/png;base64,") {
			t.Fatalf("input %s = %.40q, want a PNG data URI", k, s)
		}
	}
}

// The provider's reported run time is what its price applies to; a value
// no run can have is ignored rather than priced.
func TestBilledTimeFromPredictTime(t *testing.T) {
	for _, tc := range []struct {
		reported float64
		want     time.Duration
	}{{2.5, 2500 * time.Millisecond}, {-1, 0}, {1e9, 0}} {
		f := newFake(t)
		f.predictTime = tc.reported
		res, err := newBackend(t, quick(f)).Stage(t.Context(), testJob(t))
		if err != nil {
			t.Fatalf("Stage: %v (%s)", err, f)
		}
		if res.BilledTime != tc.want {
			t.Errorf("predict_time %v: billed %v, want %v", tc.reported, res.BilledTime, tc.want)
		}
	}
}

// TestTokenStaysOnItsOrigin gives links to another host: polls go to the
// configured base instead, and the output is fetched without the token.
func TestTokenStaysOnItsOrigin(t *testing.T) {
	var (
		mu    sync.Mutex
		auths []string
	)
	img := testPNG(t, 32, 24)
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = w.Write(img)
	}))
	t.Cleanup(cdn.Close)
	f := newFake(t)
	f.pollsToEnd = 1
	f.linkBase = cdn.URL
	if _, err := stage(t, newBackend(t, quick(f)), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(auths) != 1 || auths[0] != "/files/out.png " {
		t.Fatalf("the other host saw %q; want one download without a token", auths)
	}
	if f.polls.Load() != 1 {
		t.Fatalf("calls: %s", f)
	}
}

func TestPreferWaitAnsweredSynchronously(t *testing.T) {
	f := newFake(t)
	f.pollsToEnd = 100 // would time out if the wait were not honoured
	f.inline = true
	o := quick(f)
	o.Wait = 5 * time.Second
	res, err := stage(t, newBackend(t, o), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if f.polls.Load() != 0 || f.downloads.Load() != 0 || res.Width != 32 {
		t.Fatalf("calls: %s", f)
	}
	if f.last.prefer != "wait=5" {
		t.Fatalf("Prefer %q", f.last.prefer)
	}
	// A deadline shorter than the wait shortens it.
	if _, err := stage(t, newBackend(t, o), 3*time.Second); err != nil || f.last.prefer != "wait=1" {
		t.Fatalf("Prefer %q, err %v", f.last.prefer, err)
	}
}

func TestServerErrorBurstThenSuccess(t *testing.T) {
	f := newFake(t)
	f.createStatus = []int{503, 502, 500}
	if _, err := stage(t, newBackend(t, quick(f)), 5*time.Second); err != nil {
		t.Fatalf("Stage: %v (%s)", err, f)
	}
	if f.creates.Load() != 4 || len(f.preds) != 1 {
		t.Fatalf("calls: %s, predictions %d", f, len(f.preds))
	}
	// One attempt more than allowed fails with a retryable provider error.
	f2 := newFake(t)
	f2.createStatus = []int{503, 503, 503, 503, 503}
	_, err := stage(t, newBackend(t, quick(f2)), 5*time.Second)
	wantFault(t, err, fault.ProviderError, true)
	if f2.creates.Load() != 4 {
		t.Fatalf("creates %d, want 4", f2.creates.Load())
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	f := newFake(t)
	f.createStatus = []int{429}
	f.retryAfter = "1"
	start := time.Now()
	if _, err := stage(t, newBackend(t, quick(f)), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A floor, which a slow machine only makes easier to meet.
	if d := time.Since(start); d < time.Second || f.creates.Load() != 2 {
		t.Fatalf("%d creates in %s, want a retry after the provider's Retry-After of 1s", f.creates.Load(), d)
	}
	// A Retry-After past the deadline fails at once with the provider's
	// answer; sleeping until the deadline would end in a timeout instead.
	f2 := newFake(t)
	f2.createStatus = []int{429}
	f2.retryAfter = "30"
	_, err := stage(t, newBackend(t, quick(f2)), 10*time.Second)
	wantFault(t, err, fault.ProviderError, true)
	if f2.creates.Load() != 1 {
		t.Fatalf("creates %d, want 1", f2.creates.Load())
	}
}

func TestNoRetryOnClientError(t *testing.T) {
	for _, status := range []int{400, 401, 404, 422} {
		f := newFake(t)
		f.createStatus = []int{status}
		_, err := stage(t, newBackend(t, quick(f)), 5*time.Second)
		fe := wantFault(t, err, fault.ProviderError, false)
		if f.creates.Load() != 1 || !strings.Contains(fe.Message, fmt.Sprint(status)) {
			t.Fatalf("HTTP %d: %d creates, message %q", status, f.creates.Load(), fe.Message)
		}
	}
}

func TestFailedPrediction(t *testing.T) {
	f := newFake(t)
	f.pollsToEnd = 1
	f.final = statusFailed
	f.errText = "CUDA out of memory\n\tfor " + testToken + "\x00 " + strings.Repeat("x", 500)
	_, err := stage(t, newBackend(t, quick(f)), 5*time.Second)
	fe := wantFault(t, err, fault.ProviderError, true)
	if !strings.Contains(fe.Message, "CUDA out of memory for [redacted]") || strings.ContainsAny(fe.Message, "\n\t\x00") || len(fe.Message) > 300 {
		t.Fatalf("message not sanitized: %q", fe.Message)
	}
	if f.creates.Load() != 1 || f.downloads.Load() != 0 {
		t.Fatalf("a failed prediction was retried or downloaded: %s", f)
	}
	f2 := newFake(t)
	f2.final = statusCanceled
	_, err = stage(t, newBackend(t, quick(f2)), 5*time.Second)
	if fe := wantFault(t, err, fault.ProviderError, true); !strings.Contains(fe.Message, "canceled") {
		t.Fatalf("message %q", fe.Message)
	}
}

func TestMalformedAnswers(t *testing.T) {
	f := newFake(t)
	f.malformed = true
	_, err := stage(t, newBackend(t, quick(f)), 5*time.Second)
	wantFault(t, err, fault.ProviderError, true)
	if f.creates.Load() != 1 {
		t.Fatalf("malformed JSON was retried: %s", f)
	}

	f2 := newFake(t)
	f2.image = []byte("<html>not an image</html>")
	_, err = stage(t, newBackend(t, quick(f2)), 5*time.Second)
	wantFault(t, err, fault.ProviderError, true)

	f3 := newFake(t)
	o := quick(f3)
	o.MaxOutputBytes = 64
	_, err = stage(t, newBackend(t, o), 5*time.Second)
	if fe := wantFault(t, err, fault.ProviderError, true); !strings.Contains(fe.Message, "too large") {
		t.Fatalf("message %q", fe.Message)
	}
}

func TestCallTimeoutRetriedThenFails(t *testing.T) {
	f := newFake(t)
	f.delay = 200 * time.Millisecond
	o := quick(f)
	o.CallTimeout = 20 * time.Millisecond
	o.MaxAttempts = 2
	// The provider would answer after 200ms: only the call timeout makes
	// both attempts fail.
	_, err := stage(t, newBackend(t, o), 5*time.Second)
	if fe := wantFault(t, err, fault.ProviderError, true); !strings.Contains(fe.Message, "in time") {
		t.Fatalf("message %q", fe.Message)
	}
	if f.total.Load() != 2 {
		t.Fatalf("calls: %s", f)
	}
}

func TestDeadlineWins(t *testing.T) {
	slow := newFake(t)
	slow.delay = 5 * time.Second
	poller := newFake(t)
	poller.pollsToEnd = 1 << 20
	for name, f := range map[string]*fakeProvider{"slow answer": slow, "endless polling": poller} {
		// Both would run for seconds or forever: only the deadline ends
		// them with a timeout.
		_, err := stage(t, newBackend(t, quick(f)), 80*time.Millisecond)
		wantFault(t, err, fault.Timeout, true)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v does not wrap the deadline", name, err)
		}
		// The provider sees the call end too: nothing is left running.
		for end := time.Now().Add(time.Second); f.inflight.Load() > 0; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: %d provider calls still running after the deadline", name, f.inflight.Load())
			}
		}
	}
}

func TestCancellationIsNotAProviderFailure(t *testing.T) {
	f := newFake(t)
	f.delay = 5 * time.Second
	o := quick(f)
	o.BreakerFailures = 1
	b := newBackend(t, o)
	for range 3 {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(10*time.Millisecond, cancel)
		_, err := b.Stage(ctx, testJob(t))
		wantFault(t, err, fault.Canceled, false)
	}
	if s := b.CircuitState(); s != "closed" {
		t.Fatalf("circuit %s after cancellations", s)
	}
}

func TestBreakerOpensFailsFastAndHalfOpens(t *testing.T) {
	f := newFake(t)
	f.failEvery.Store(true)
	o := quick(f)
	o.MaxAttempts = 1
	o.BreakerFailures = 3
	// Long enough that the circuit is still open for the refused job
	// however slowly the machine runs it.
	o.BreakerOpenTimeout = time.Second
	var changes []string // appended under the breaker's lock; read after
	o.OnCircuitChange = func(from, to string) { changes = append(changes, from+">"+to) }
	b := newBackend(t, o)
	for range 3 {
		_, err := stage(t, b, time.Second)
		wantFault(t, err, fault.ProviderError, true)
	}
	if b.CircuitState() != "open" {
		t.Fatalf("circuit %s after 3 failures", b.CircuitState())
	}
	seen := f.total.Load()
	_, err := stage(t, b, time.Second)
	if fe := wantFault(t, err, fault.ProviderError, true); !strings.Contains(fe.Message, "paused") {
		t.Fatalf("message %q", fe.Message)
	}
	if f.total.Load() != seen {
		t.Fatalf("an open circuit reached the provider: %s", f)
	}
	// After the open timeout one trial goes through; its success closes
	// the circuit.
	time.Sleep(o.BreakerOpenTimeout + 10*time.Millisecond)
	if b.CircuitState() != "half-open" {
		t.Fatalf("circuit %s after the open timeout", b.CircuitState())
	}
	f.failEvery.Store(false)
	if _, err := stage(t, b, time.Second); err != nil {
		t.Fatal(err)
	}
	if b.CircuitState() != "closed" {
		t.Fatalf("circuit %s after a successful trial", b.CircuitState())
	}
	if got := strings.Join(changes, " "); got != "closed>open open>half-open half-open>closed" {
		t.Fatalf("circuit changes %q", got)
	}
}

func TestFallbackWhileOpen(t *testing.T) {
	f := newFake(t)
	f.failEvery.Store(true)
	o := quick(f)
	o.MaxAttempts = 1
	o.BreakerFailures = 2
	o.FallbackToMock = true
	o.Fallback = &backend.Mock{Quality: 80}
	b := newBackend(t, o)
	for range 2 {
		_, err := stage(t, b, time.Second)
		wantFault(t, err, fault.ProviderError, true)
	}
	seen := f.total.Load()
	res, err := stage(t, b, time.Second)
	if err != nil || res.ModelRev != backend.MockModelRev || !hasWarning(res, WarningFallback) {
		t.Fatalf("fallback: %+v, %v", res.Warnings, err)
	}
	if f.total.Load() != seen {
		t.Fatalf("the fallback reached the provider: %s", f)
	}
	time.Sleep(o.BreakerOpenTimeout + 10*time.Millisecond)
	f.failEvery.Store(false)
	res, err = stage(t, b, time.Second)
	if err != nil || res.ModelRev != "managed:v123" || hasWarning(res, WarningFallback) {
		t.Fatalf("after recovery: %s %v, %v", res.ModelRev, res.Warnings, err)
	}
}

func hasWarning(r backend.Result, w string) bool {
	for _, x := range r.Warnings {
		if x == w {
			return true
		}
	}
	return false
}

func TestTokenNeverLeaks(t *testing.T) {
	var logs bytes.Buffer
	f := newFake(t)
	f.failEvery.Store(true)
	f.echoToken = true
	o := quick(f)
	o.MaxAttempts = 2
	o.BreakerFailures = 1
	o.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newBackend(t, o)
	var errs []string
	for range 2 {
		_, err := stage(t, b, time.Second)
		errs = append(errs, err.Error(), fmt.Sprintf("%+v", err))
	}
	o.Logger.Info("options", slog.Any("opts", o), slog.Any("token", o.Token))
	all := logs.String() + strings.Join(errs, "\n") + fmt.Sprintf("%+v %#v %v", o, o, o.Token)
	if strings.Contains(all, testToken) {
		t.Fatalf("the token leaked:\n%s", all)
	}
	if !strings.Contains(logs.String(), "retrying") || !strings.Contains(logs.String(), "circuit") {
		t.Fatalf("expected retry and circuit lines in the log:\n%s", logs.String())
	}
}

func TestNewChecksOptions(t *testing.T) {
	good := Options{BaseURL: "https://api.example.com", Version: "v", Token: "t"}
	for name, mutate := range map[string]func(*Options){
		"bad url":        func(o *Options) { o.BaseURL = "ftp://x" },
		"no version":     func(o *Options) { o.Version = "" },
		"no token":       func(o *Options) { o.Token = "" },
		"no fallback":    func(o *Options) { o.FallbackToMock = true },
		"wait too large": func(o *Options) { o.Wait = time.Minute + time.Second },
	} {
		o := good
		mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
}

func TestReadToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("  "+testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := ReadToken("", p); err != nil || string(tok) != testToken {
		t.Fatalf("from file: %v", err)
	}
	if tok, err := ReadToken(testToken+"\n", ""); err != nil || string(tok) != testToken {
		t.Fatalf("from value: %v", err)
	}
	for _, tc := range [][2]string{{"", ""}, {"a", p}, {"", filepath.Join(t.TempDir(), "missing")}} {
		if _, err := ReadToken(tc[0], tc[1]); err == nil {
			t.Errorf("ReadToken(%q, %q) accepted", tc[0], tc[1])
		}
	}
	empty := filepath.Join(t.TempDir(), "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := ReadToken("", empty); err == nil || strings.Contains(err.Error(), testToken) {
		t.Fatalf("empty file: %v", err)
	}
}

// The provider has no upscaler of ours: an upscaled job's image is its
// output resampled to the final size, and the answer says so.
func TestUpscaleResamplesTheProvidersImage(t *testing.T) {
	f := newFake(t)
	job := testJob(t)
	job.UpscaleLongSide = 96
	res, err := newBackend(t, quick(f)).Stage(t.Context(), job)
	if err != nil {
		t.Fatalf("Stage: %v (%s)", err, f)
	}
	if res.Width != 96 || res.Height != 72 || res.ContentType != "image/jpeg" || !slices.Equal(res.Warnings, []string{backend.WarningUpscaleResampled}) {
		t.Fatalf("result %dx%d %s %v, want a 96x72 JPEG with %s", res.Width, res.Height, res.ContentType, res.Warnings, backend.WarningUpscaleResampled)
	}
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(res.Image))
	if err != nil || cfg.Width != 96 || cfg.Height != 72 {
		t.Fatalf("image %+v %v, want 96x72", cfg, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.last.body["input"].(map[string]any)["upscale"]; ok {
		t.Errorf("the provider was asked to upscale: %v", f.last.body)
	}
}
