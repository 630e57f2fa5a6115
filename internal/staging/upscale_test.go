package staging

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

// tallyStore counts every storage call, to show that a refusal read
// and wrote nothing.
type tallyStore struct {
	Store
	calls atomic.Int64
}

func (c *tallyStore) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	c.calls.Add(1)
	return c.Store.Get(ctx, key, maxBytes)
}

func (c *tallyStore) Put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	c.calls.Add(1)
	return c.Store.Put(ctx, key, data, opts)
}

func (c *tallyStore) Delete(ctx context.Context, key string) error {
	c.calls.Add(1)
	return c.Store.Delete(ctx, key)
}

// upscaleFixture is newFixture's service with the upscaler's policy u, on
// a store that counts its calls, and admission that records its requests.
func upscaleFixture(t *testing.T, u config.Upscale) (*Service, *tallyStore, *[]admission.Request) {
	t.Helper()
	f := newFixture(t, 0)
	store := &tallyStore{Store: f.store}
	opts := f.svc.opts
	opts.Upscale = u
	var asked []admission.Request
	b := NewSingle(f.be)
	b.Admit = func(_ context.Context, _ string, r admission.Request) (func(admission.Report), error) {
		asked = append(asked, r)
		return func(admission.Report) {}, nil
	}
	return New(store, b, f.svc.catalog, opts, f.metrics, nil), store, &asked
}

var paid = config.Upscale{Enabled: true, Tiers: []admission.Tier{admission.TierPro, admission.TierBusiness}, LongSide: 256}

func upscaled(id, tier string) Request {
	r := req(id)
	r.Tier, r.Upscale = tier, true
	return r
}

func TestUpscaleAnswersTheFinalSize(t *testing.T) {
	svc, _, asked := upscaleFixture(t, paid)
	out, err := svc.Stage(t.Context(), upscaled("up", "pro"))
	if err != nil {
		t.Fatal(err)
	}
	// The 200x100 original, rendered at 64 by the mock, then brought to 256.
	if out.Width != 256 || out.Height != 128 {
		t.Errorf("size %dx%d, want 256x128", out.Width, out.Height)
	}
	if strings.Join(out.Warnings, ",") != backend.WarningUpscaleResampled {
		t.Errorf("warnings %v, want %s", out.Warnings, backend.WarningUpscaleResampled)
	}
	// Admission priced the job at its final size, not the render's.
	if len(*asked) == 0 || (*asked)[0].Megapixels != 256*256/1e6 {
		t.Errorf("admission asked %+v, want %v MP", *asked, 256*256/1e6)
	}
	plain, err := svc.Stage(t.Context(), req("plain"))
	if err != nil {
		t.Fatal(err)
	}
	if plain.Width != 64 || len(plain.Warnings) != 0 || (*asked)[len(*asked)-1].Megapixels != 64*64/1e6 {
		t.Errorf("plain job: %+v, admission %+v", plain, *asked)
	}
}

func TestUpscaleIsPartOfTheJob(t *testing.T) {
	svc, _, _ := upscaleFixture(t, paid)
	if _, err := svc.Stage(t.Context(), upscaled("same", "business")); err != nil {
		t.Fatal(err)
	}
	if out, err := svc.Stage(t.Context(), upscaled("same", "business")); err != nil || !out.Replay || out.Width != 256 {
		t.Errorf("the same upscaled job: %+v %v, want a replay at 256", out, err)
	}
	r := req("same")
	r.Tier = "business"
	if _, err := svc.Stage(t.Context(), r); fault.CodeOf(err) != fault.IdempotencyConflict {
		t.Errorf("the same image_id without upscale: %v, want idempotency_conflict", err)
	}
	if _, err := svc.Stage(t.Context(), req("other")); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Stage(t.Context(), upscaled("other", "pro")); fault.CodeOf(err) != fault.IdempotencyConflict {
		t.Errorf("upscale under the image_id of a plain job: %v, want idempotency_conflict", err)
	}
}

// A record written before upscaling existed has no "upscale" member; it
// answers the plain job and conflicts with an upscaled one.
func TestRecordWithoutUpscaleIsAPlainJob(t *testing.T) {
	svc, store, _ := upscaleFixture(t, paid)
	if _, err := svc.Stage(t.Context(), req("old")); err != nil {
		t.Fatal(err)
	}
	data, err := store.Get(t.Context(), "l/staged/old.jpg.json", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "upscale") {
		t.Fatalf("a plain job's record names upscale: %s", data)
	}
	if out, err := svc.Stage(t.Context(), req("old")); err != nil || !out.Replay {
		t.Errorf("replay of the old record: %+v %v", out, err)
	}
	if _, err := svc.Stage(t.Context(), upscaled("old", "pro")); fault.CodeOf(err) != fault.IdempotencyConflict {
		t.Errorf("upscale over the old record: %v, want idempotency_conflict", err)
	}
}

func TestUpscaleRefusalsTouchNothing(t *testing.T) {
	for name, tc := range map[string]struct {
		policy config.Upscale
		tier   string
		code   fault.Code
		msg    string
	}{
		"disabled":      {config.Upscale{LongSide: 256}, "business", fault.InvalidInput, "upscaling is disabled on this service"},
		"free tier":     {paid, "free", fault.Forbidden, `upscale is not available to tier free; it is for tiers pro, business`},
		"no tier named": {paid, "", fault.Forbidden, "not available to tier free"},
		"pro not paid":  {config.Upscale{Enabled: true, Tiers: []admission.Tier{admission.TierBusiness}, LongSide: 256}, "pro", fault.Forbidden, "it is for tiers business"},
	} {
		t.Run(name, func(t *testing.T) {
			svc, store, asked := upscaleFixture(t, tc.policy)
			_, err := svc.Stage(t.Context(), upscaled("refused", tc.tier))
			e := fault.From(err)
			if e.Code != tc.code || e.Retryable || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("got %s %q (retryable %v), want %s with %q", e.Code, e.Message, e.Retryable, tc.code, tc.msg)
			}
			if n := store.calls.Load(); n != 0 || len(*asked) != 0 {
				t.Errorf("%d storage calls and %d admission requests, want none", n, len(*asked))
			}
		})
	}
}

func TestJobSpanNamesTheUpscale(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	f := newFixture(t, 0)
	opts := f.svc.opts
	opts.Upscale, opts.Tracer = paid, tp.Tracer("test")
	svc := New(f.store, NewSingle(f.be), f.svc.catalog, opts, f.metrics, nil)
	for _, r := range []Request{upscaled("span-up", "pro"), req("span-plain")} {
		if _, err := svc.Stage(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	for _, s := range rec.Ended() {
		if s.Name() != "staging.job" {
			continue
		}
		var id, up string
		for _, kv := range s.Attributes() {
			switch kv.Key {
			case "vstage.image_id":
				id = kv.Value.AsString()
			case "vstage.upscale":
				up = kv.Value.Emit()
			}
		}
		got[id] = up
	}
	if got["span-up"] != "true" || got["span-plain"] != "false" {
		t.Errorf("vstage.upscale by job: %v", got)
	}
}
