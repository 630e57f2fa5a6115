package staging

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/jpeg"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
	"github.com/vstage/vstage/internal/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingBackend runs the real mock backend, counts its executions, and
// can be made slow or failing.
type countingBackend struct {
	mock  backend.Mock
	calls atomic.Int64
	delay time.Duration
	fail  atomic.Bool
}

func (b *countingBackend) Name() string { return "mock" }

func (b *countingBackend) Stage(ctx context.Context, job backend.Job) (backend.Result, error) {
	b.calls.Add(1)
	select {
	case <-time.After(b.delay):
	case <-ctx.Done():
		return backend.Result{}, ctx.Err()
	}
	if b.fail.Load() {
		return backend.Result{}, fault.New(fault.Unavailable, "backend down")
	}
	return b.mock.Stage(ctx, job)
}

type fixture struct {
	svc     *Service
	be      *countingBackend
	store   *storage.Local
	metrics *telemetry.StagingMetrics
}

func newFixture(t *testing.T, delay time.Duration) fixture {
	t.Helper()
	store, err := storage.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, image.NewGray(image.Rect(0, 0, 200, 100)), nil); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(t.Context(), "l/o.jpg", buf.Bytes(), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	be := &countingBackend{mock: backend.Mock{Quality: 90}, delay: delay}
	m := telemetry.NewStagingMetrics(prometheus.NewRegistry())
	svc := New(store, NewSingle(be), catalog.Default(), testOptions(), m, nil)
	return fixture{svc: svc, be: be, store: store, metrics: m}
}

// testOptions are the options of every test service; tests change a copy.
func testOptions() Options {
	return Options{
		StagedKey:      func(o, id string) string { return "l/staged/" + id + ".jpg" },
		MaxInputBytes:  1 << 20,
		MaxInputPixels: 1 << 20,
		OutputLongSide: 64,
	}
}

func req(id string) Request {
	return Request{ImageID: id, OriginalKey: "l/o.jpg", RoomType: "bedroom", Style: "modern"}
}

func TestConcurrentDuplicatesShareOneExecution(t *testing.T) {
	f := newFixture(t, 200*time.Millisecond)
	const n = 16
	outs := make([]Outcome, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = f.svc.Stage(t.Context(), req("dup"))
		}()
	}
	wg.Wait()
	if got := f.be.calls.Load(); got != 1 {
		t.Errorf("backend ran %d times, want 1", got)
	}
	fresh := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if !outs[i].Replay {
			fresh++
		}
		if outs[i].Response.Seed != outs[0].Response.Seed || outs[i].StagedKey != outs[0].StagedKey || outs[i].DurationMS != outs[0].DurationMS {
			t.Errorf("request %d answered %+v, request 0 %+v", i, outs[i].Response, outs[0].Response)
		}
	}
	if fresh != 1 {
		t.Errorf("%d answers did the work, want 1", fresh)
	}
	if got := testutil.ToFloat64(f.metrics.Shared); got < 1 {
		t.Errorf("shared executions = %v", got)
	}
}

func TestConcurrentDifferentParametersConflict(t *testing.T) {
	f := newFixture(t, 200*time.Millisecond)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, style := range []string{"modern", "industrial"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := req("same-id")
			r.Style = style
			_, errs[i] = f.svc.Stage(t.Context(), r)
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if errs[0] != nil || fault.CodeOf(errs[1]) != fault.IdempotencyConflict {
		t.Errorf("errors = %v, %v; want nil then idempotency_conflict", errs[0], errs[1])
	}
	if got := f.be.calls.Load(); got != 1 {
		t.Errorf("backend ran %d times, want 1", got)
	}
}

func TestFailedJobLeavesNoRecordAndRetryRuns(t *testing.T) {
	f := newFixture(t, 0)
	f.be.fail.Store(true)
	_, err := f.svc.Stage(t.Context(), req("retry"))
	if fault.CodeOf(err) != fault.Unavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
	for _, key := range []string{"l/staged/retry.jpg", "l/staged/retry.jpg.json"} {
		if _, err := f.store.Get(t.Context(), key, 1<<20); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s after a failure: %v, want not found", key, err)
		}
	}
	f.be.fail.Store(false)
	out, err := f.svc.Stage(t.Context(), req("retry"))
	if err != nil || out.Replay {
		t.Fatalf("retry: %+v %v, want a fresh success", out, err)
	}
	if got := f.be.calls.Load(); got != 2 {
		t.Errorf("backend ran %d times, want 2", got)
	}
	if got := testutil.ToFloat64(f.metrics.Jobs.WithLabelValues("mock", "unavailable", "free")); got != 1 {
		t.Errorf("jobs{outcome=unavailable} = %v", got)
	}
}

func TestDeadlineBecomesTimeout(t *testing.T) {
	f := newFixture(t, time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := f.svc.Stage(ctx, req("slow"))
	if fault.CodeOf(err) != fault.Timeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want timeout wrapping the deadline", err)
	}
	if _, err := f.store.Get(t.Context(), "l/staged/slow.jpg.json", 1<<20); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("record after a timeout: %v", err)
	}
}

func TestWaiterOutlivesLeaderThatGaveUp(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	leaderCtx, cancel := context.WithCancel(t.Context())
	leaderDone := make(chan error, 1)
	go func() {
		_, err := f.svc.Stage(leaderCtx, req("shared"))
		leaderDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	waiter := make(chan error, 1)
	go func() {
		_, err := f.svc.Stage(t.Context(), req("shared"))
		waiter <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-leaderDone; fault.CodeOf(err) != fault.Canceled {
		t.Errorf("leader: %v, want canceled", err)
	}
	if err := <-waiter; err != nil {
		t.Errorf("waiter: %v, want its own run to succeed", err)
	}
}
