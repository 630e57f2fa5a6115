package staging

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/telemetry"
)

// billingBackend answers through the mock backend under another name, with
// a billed time and phases, or fails, as a provider or the engine would.
type billingBackend struct {
	name   string
	billed time.Duration
	fail   bool
	answer string // Result.Backend, as when a fallback answered
}

func (b *billingBackend) Name() string { return b.name }

func (b *billingBackend) Stage(ctx context.Context, job backend.Job) (backend.Result, error) {
	if b.fail {
		return backend.Result{}, fault.New(fault.ProviderError, "provider failed")
	}
	mock := backend.Mock{Quality: 90}
	res, err := mock.Stage(ctx, job)
	res.BilledTime, res.Backend = b.billed, b.answer
	res.Phases = []backend.Phase{{Name: "denoise", Duration: 1500 * time.Millisecond}, {Name: "encode", Duration: 20 * time.Millisecond}}
	return res, err
}

func costFixture(t *testing.T, be *billingBackend, prices map[string]Price) (*Service, *telemetry.StagingMetrics) {
	t.Helper()
	f := newFixture(t, 0)
	m := telemetry.NewStagingMetrics(prometheus.NewRegistry())
	opts := testOptions()
	opts.Prices = prices
	svc := New(f.store, NewSingle(be), catalog.Default(), opts, m, nil)
	return svc, m
}

func TestCostCountsBilledTimeByBackendAndTier(t *testing.T) {
	be := &billingBackend{name: "managed", billed: 4 * time.Second}
	svc, m := costFixture(t, be, map[string]Price{"managed": {PerSecond: 0.001, PerRun: 0.01}})
	r := req("paid")
	r.Tier = "pro"
	if _, err := svc.Stage(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if got, want := testutil.ToFloat64(m.Cost.WithLabelValues("managed", "pro")), 0.01+4*0.001; !near(got, want) {
		t.Errorf("cost = %v, want %v (per run plus 4 billed seconds)", got, want)
	}
	if got := testutil.ToFloat64(m.BackendSeconds.WithLabelValues("managed", "pro")); !near(got, 4) {
		t.Errorf("backend seconds = %v, want the 4 billed", got)
	}
	if got := testutil.ToFloat64(m.Jobs.WithLabelValues("managed", "ok", "pro")); got != 1 {
		t.Errorf("jobs{managed,ok,pro} = %v", got)
	}
	// The replay costs nothing more.
	if out, err := svc.Stage(t.Context(), r); err != nil || !out.Replay {
		t.Fatalf("replay: %+v %v", out, err)
	}
	if got := testutil.ToFloat64(m.Cost.WithLabelValues("managed", "pro")); !near(got, 0.014) {
		t.Errorf("cost after a replay = %v, want unchanged", got)
	}
	if got := testutil.CollectAndCount(m.Phases); got != len(telemetry.Phases) {
		t.Errorf("phase series = %d, want one per phase (%d)", got, len(telemetry.Phases))
	}
	if got := phaseCount(t, m, "denoise"); got != 1 {
		t.Errorf("denoise observations = %d, want 1", got)
	}
}

func TestCostCountsFailedCallsAndFallbacks(t *testing.T) {
	prices := map[string]Price{"managed": {PerRun: 0.5}}
	be := &billingBackend{name: "managed", fail: true}
	svc, m := costFixture(t, be, prices)
	if _, err := svc.Stage(t.Context(), req("failed")); fault.CodeOf(err) != fault.ProviderError {
		t.Fatalf("err = %v, want provider_error", err)
	}
	if got := testutil.ToFloat64(m.Cost.WithLabelValues("managed", "free")); !near(got, 0.5) {
		t.Errorf("a failed run cost %v, want its price 0.5: the provider charged for it", got)
	}
	be.fail, be.answer = false, "mock"
	if _, err := svc.Stage(t.Context(), req("fallback")); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.Cost.WithLabelValues("managed", "free")); !near(got, 0.5) {
		t.Errorf("cost = %v after a fallback answer, want unchanged: mock did the work", got)
	}
	if got := testutil.ToFloat64(m.Jobs.WithLabelValues("mock", "ok", "free")); got != 1 {
		t.Errorf("jobs{mock,ok,free} = %v, want the fallback's answer counted under mock", got)
	}
}

func TestRefusedTierIsUnknown(t *testing.T) {
	f := newFixture(t, 0)
	r := req("bad-tier")
	r.Tier = "platinum"
	if _, err := f.svc.Stage(t.Context(), r); fault.CodeOf(err) != fault.InvalidInput {
		t.Fatalf("err = %v, want invalid_input", err)
	}
	if got := testutil.ToFloat64(f.metrics.Jobs.WithLabelValues("mock", "invalid_input", "unknown")); got != 1 {
		t.Errorf("jobs{invalid_input,unknown} = %v, want 1: a bad tier must not become a label value", got)
	}
}

func phaseCount(t *testing.T, m *telemetry.StagingMetrics, phase string) uint64 {
	t.Helper()
	h, ok := m.Phases.WithLabelValues(phase).(prometheus.Histogram)
	if !ok {
		t.Fatal("not a histogram")
	}
	var out dto.Metric
	if err := h.Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetHistogram().GetSampleCount()
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// Every outcome's series exists at zero before the first job, so that the
// first failure of a kind counts in rate().
func TestJobSeriesExistBeforeTheFirstJob(t *testing.T) {
	f := newFixture(t, 0)
	if got := testutil.CollectAndCount(f.metrics.Jobs); got != len(outcomes)*3+1 {
		t.Errorf("%d job series before any job, want %d (every outcome and tier, and invalid_input of an unknown tier)", got, len(outcomes)*3+1)
	}
	if got := testutil.ToFloat64(f.metrics.Jobs.WithLabelValues("mock", "oom", "business")); got != 0 {
		t.Errorf("jobs{oom,business} = %v before any job", got)
	}
}

// The job's span records the prompts only when asked: they are the
// business's wording, and long.
func TestJobSpanRecordsPromptsOnlyWhenAsked(t *testing.T) {
	for _, record := range []bool{false, true} {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		f := newFixture(t, 0)
		opts := testOptions()
		opts.Tracer, opts.RecordPrompts = tp.Tracer("test"), record
		svc := New(f.store, NewSingle(f.be), catalog.Default(), opts, telemetry.NewStagingMetrics(prometheus.NewRegistry()), nil)
		if _, err := svc.Stage(t.Context(), req("prompts")); err != nil {
			t.Fatal(err)
		}
		var prompt string
		for _, s := range rec.Ended() {
			for _, kv := range s.Attributes() {
				if kv.Key == "vstage.prompt" {
					prompt = kv.Value.AsString()
				}
			}
		}
		if record != (prompt != "") {
			t.Errorf("RecordPrompts %v: prompt attribute %q", record, prompt)
		}
	}
}
