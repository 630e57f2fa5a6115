package staging

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
	"github.com/vstage/vstage/internal/telemetry"
)

// checkingBackend answers as an engine whose checks ran: its result, or
// err, replaces the mock's answer.
type checkingBackend struct {
	mock   backend.Mock
	result func(job backend.Job, res *backend.Result)
	err    error
}

func (b *checkingBackend) Name() string { return "self" }

func (b *checkingBackend) Stage(ctx context.Context, job backend.Job) (backend.Result, error) {
	if b.err != nil {
		return backend.Result{}, b.err
	}
	res, err := b.mock.Stage(ctx, job)
	if err == nil && b.result != nil {
		b.result(job, &res)
	}
	return res, err
}

func checkedFixture(t *testing.T, be *checkingBackend) fixture {
	t.Helper()
	f := newFixture(t, 0)
	f.metrics = telemetry.NewStagingMetrics(prometheus.NewRegistry())
	f.svc = New(f.store, NewSingle(be), catalog.Default(), testOptions(), f.metrics, nil)
	return f
}

func seeded(id string, seed uint32) Request {
	r := req(id)
	r.Seed = &seed
	return r
}

func TestAnsweredSeedIsTheEngines(t *testing.T) {
	be := &checkingBackend{mock: backend.Mock{Quality: 90}, result: func(job backend.Job, res *backend.Result) {
		// A structure retry: the image was made with the next seed.
		next := job.Seed + 1
		res.Seed = &next
		res.Checks = backend.Checks{Structure: true, StructureScore: 0.9, Renders: 2}
	}}
	f := checkedFixture(t, be)
	out, err := f.svc.Stage(t.Context(), seeded("job", 41))
	if err != nil {
		t.Fatal(err)
	}
	if out.Seed != 42 || out.Replay {
		t.Fatalf("answer seed %d (replay %v), want the engine's 42", out.Seed, out.Replay)
	}
	data, err := f.store.Get(t.Context(), jobRecord, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Response.Seed != 42 || rec.JobSeed == nil || *rec.JobSeed != 41 {
		t.Errorf("record seeds: answer %d, job %v; want 42 and 41", rec.Response.Seed, rec.JobSeed)
	}
	// The request is matched by the seed it asked for.
	for _, r := range []Request{seeded("job", 41), req("job")} {
		again, err := f.svc.Stage(t.Context(), r)
		if err != nil || !again.Replay || again.Seed != 42 {
			t.Errorf("repeat (seed %v): %+v, %v; want a replay answering 42", r.Seed, again, err)
		}
	}
	if _, err := f.svc.Stage(t.Context(), seeded("job", 42)); fault.CodeOf(err) != fault.IdempotencyConflict {
		t.Errorf("another seed under the same image_id: %v, want a conflict", err)
	}
	if n := testutil.ToFloat64(f.metrics.StructureRetries); n != 1 {
		t.Errorf("retries = %v, want 1", n)
	}
}

func TestRecordWithoutJobSeedMatchesItsAnswer(t *testing.T) {
	// Records written before job_seed existed: the answer's seed was the job's.
	p := plan{params: params{OriginalKey: "k"}, seed: new(uint32)}
	*p.seed = 7
	old := record{Params: params{OriginalKey: "k"}, Response: Response{Seed: 7}}
	if !p.matches(old) {
		t.Error("an old record with the same seed does not match")
	}
	old.Response.Seed = 8
	if p.matches(old) {
		t.Error("an old record with another seed matches")
	}
}

func TestContentRejectedWritesNothing(t *testing.T) {
	be := &checkingBackend{err: fault.New(fault.ContentRejected, "the photo shows people")}
	f := checkedFixture(t, be)
	before := storeKeys(t, f.store)
	_, err := f.svc.Stage(t.Context(), req("job"))
	if fault.CodeOf(err) != fault.ContentRejected || fault.From(err).Retryable {
		t.Fatalf("err %v, want content_rejected, not retryable", err)
	}
	if after := storeKeys(t, f.store); !maps.Equal(before, after) {
		t.Errorf("store changed: %v -> %v", before, after)
	}
	if n := testutil.ToFloat64(f.metrics.ContentDecisions.WithLabelValues("reject")); n != 1 {
		t.Errorf("reject decisions = %v, want 1", n)
	}
	if n := testutil.ToFloat64(f.metrics.Jobs.WithLabelValues("self", "content_rejected", "free")); n != 1 {
		t.Errorf("content_rejected jobs = %v, want 1", n)
	}
}

func TestChecksAreCounted(t *testing.T) {
	be := &checkingBackend{mock: backend.Mock{Quality: 90}, result: func(job backend.Job, res *backend.Result) {
		res.Warnings = []string{backend.WarningPeopleDetected, backend.WarningStructureCheckFailed}
		res.Checks = backend.Checks{Content: true, Structure: true, StructureScore: 0.25, Renders: 4}
	}}
	f := checkedFixture(t, be)
	out, err := f.svc.Stage(t.Context(), req("job"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Warnings, []string{"people_detected", "structure_check_failed"}) {
		t.Errorf("warnings %q", out.Warnings)
	}
	m := f.metrics
	for name, got := range map[string]float64{
		"warn":     testutil.ToFloat64(m.ContentDecisions.WithLabelValues("warn")),
		"pass":     testutil.ToFloat64(m.ContentDecisions.WithLabelValues("pass")),
		"failures": testutil.ToFloat64(m.StructureFailures),
		"retries":  testutil.ToFloat64(m.StructureRetries),
	} {
		want := map[string]float64{"warn": 1, "pass": 0, "failures": 1, "retries": 3}[name]
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	var h dto.Metric
	if err := m.StructureScore.(prometheus.Metric).Write(&h); err != nil {
		t.Fatal(err)
	}
	if h.GetHistogram().GetSampleCount() != 1 || h.GetHistogram().GetSampleSum() != 0.25 {
		t.Errorf("score histogram: %v", h.GetHistogram())
	}

	// A backend that runs no checks counts none.
	f = checkedFixture(t, &checkingBackend{mock: backend.Mock{Quality: 90}})
	if _, err := f.svc.Stage(t.Context(), req("job")); err != nil {
		t.Fatal(err)
	}
	for _, d := range telemetry.ContentDecisions {
		if n := testutil.ToFloat64(f.metrics.ContentDecisions.WithLabelValues(d)); n != 0 {
			t.Errorf("%s decisions = %v without checks", d, n)
		}
	}
}

func storeKeys(t *testing.T, s *storage.Local) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, k := range []string{"l/o.jpg", "l/staged/job.jpg", jobRecord, claimKey(jobRecord, 0)} {
		if _, err := s.Get(t.Context(), k, 1<<20); err == nil {
			out[k] = true
		}
	}
	return out
}
