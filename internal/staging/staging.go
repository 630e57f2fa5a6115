// Package staging is the /infer use case: validate a request, replay or
// refuse it by image_id, read and check its inputs, run a backend, and write
// the staged image and the idempotency record. It works against interfaces
// (a blob store, a backend) so every part can be real in tests.
package staging

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/storage"
	"github.com/vstage/vstage/internal/telemetry"
)

// Store is the part of a blob store the use case needs; see storage.Store
// for what each method promises.
type Store interface {
	Get(ctx context.Context, key string, maxBytes int64) ([]byte, error)
	Put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error
	Delete(ctx context.Context, key string) error
}

// Options are the limits and policies of the use case.
type Options struct {
	// AllowedPrefixes are the folders keys must be under; empty allows any.
	AllowedPrefixes storage.Prefixes
	// StagedKey derives the staged image's key from the original's key and
	// the image id.
	StagedKey func(originalKey, imageID string) string
	// StagedCacheControl is written with every staged image.
	StagedCacheControl string
	// MaxInputBytes caps the size of an original or mask read from storage.
	MaxInputBytes int64
	// MaxInputPixels caps an original's or mask's pixels, checked from the
	// header before anything is decoded.
	MaxInputPixels int64
	// OutputLongSide is the long side of the staged image.
	OutputLongSide int
	// DecodeBudget bounds the pixels of the masks decoded at once (see
	// verifyMask); nil bounds nothing. The mock backend shares it.
	DecodeBudget *imagecheck.Budget
	// Prices prices each backend's calls by name for the cost metrics; a
	// backend without one costs nothing.
	Prices map[string]Price
	// Discloser marks every staged image as AI-altered (and labels it when
	// the job asks); nil writes the backend's bytes as they are.
	Discloser Discloser
	// LabelDefault is the label of requests that do not say
	// [DISCLOSURE_LABEL_DEFAULT].
	LabelDefault bool
	// Upscale says who may ask for an upscale, and to what size
	// [UPSCALE_ENABLED, UPSCALE_TIERS, UPSCALE_LONG_SIDE]; the zero value
	// refuses every request that asks.
	Upscale config.Upscale
	// Tracer makes the job's spans; nil makes none.
	Tracer trace.Tracer
	// RecordPrompts adds the prompts to the job's span.
	RecordPrompts bool
}

// Discloser marks staged images; *disclosure.Discloser is the production
// one. Apply returns a JPEG whose only metadata says that the image holds
// AI-generated content, with the label burned in when label is set; when
// it must decode data to do so, it first takes the pixels through reserve.
type Discloser interface {
	Apply(data []byte, label bool, reserve func(pixels int64) (release func(), err error)) ([]byte, error)
}

// Price is what one call of a backend costs: PerRun, plus PerSecond for
// each second of its billed time (Result.BilledTime, else the time the
// call took).
type Price struct {
	PerSecond float64
	PerRun    float64
}

// Backends are the backends a Service routes jobs to.
type Backends struct {
	// ByName holds every configured backend by its Name.
	ByName map[string]backend.Backend
	// Route picks the backend for an image_id; it must name one in ByName.
	// Nil always picks Default.
	Route func(imageID string) string
	// Default is the backend when Route is nil.
	Default string
	// Admit, when not nil, asks for a place for a job on the named backend
	// before its inputs are read, or refuses it with a fault (overloaded,
	// unavailable). With req.NoWait it answers at once, with a place or an
	// error. release is called once the backend is done with the job, with
	// what the job cost (a zero Report when it did not run).
	Admit func(ctx context.Context, backendName string, req admission.Request) (release func(admission.Report), err error)
}

// NewSingle returns Backends that send every job to b.
func NewSingle(b backend.Backend) Backends {
	return Backends{ByName: map[string]backend.Backend{b.Name(): b}, Default: b.Name()}
}

func (b Backends) route(imageID string) string {
	if b.Route == nil {
		return b.Default
	}
	return b.Route(imageID)
}

// Service runs staging jobs. It is safe for concurrent use.
type Service struct {
	store    Store
	backends Backends
	catalog  *catalog.Catalog
	opts     Options
	validate validator
	metrics  *telemetry.StagingMetrics
	log      *slog.Logger
	tracer   trace.Tracer
	// drawSeed picks a seed when a request has none.
	drawSeed func() uint32

	// owner names this replica in the claims it writes (claim.go).
	owner string

	mu    sync.Mutex
	calls map[string]*call // by record key
}

// call is one execution that identical concurrent requests share.
type call struct {
	done chan struct{}
	plan plan
	rec  record
	err  error
}

// Outcome is a finished job's answer.
type Outcome struct {
	Response
	// Replay is true when no backend work was done for this request: the
	// answer is a recorded one, or another identical request's.
	Replay bool
	// Backend names the backend that produced the image.
	Backend string
	// BackendTime is how long the backend took, as the sidecar saw it;
	// zero for a replay. The rest of the request's time is the sidecar's.
	BackendTime time.Duration
	// EngineTime is the engine's own share of BackendTime
	// (backend.Result.EngineTime); zero for a replay and other backends.
	EngineTime time.Duration
}

// New returns a Service. metrics must not be nil; log may be nil to
// discard the service's own log lines.
func New(store Store, b Backends, cat *catalog.Catalog, opts Options, metrics *telemetry.StagingMetrics, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tracer := opts.Tracer
	if tracer == nil {
		tracer = noop.NewTracerProvider().Tracer("")
	}
	precount(metrics, b)
	return &Service{
		store: store, backends: b, catalog: cat, opts: opts, metrics: metrics, log: log, tracer: tracer,
		validate: validator{catalog: cat, prefixes: opts.AllowedPrefixes, stagedKey: opts.StagedKey, label: opts.LabelDefault, upscale: opts.Upscale},
		drawSeed: rand.Uint32,
		owner:    newOwner(),
		calls:    map[string]*call{},
	}
}

// Stage runs one job. Errors are *fault.Error values; a context that ends
// first yields a Timeout (deadline) or Canceled error wrapping ctx.Err().
func (s *Service) Stage(ctx context.Context, req Request) (Outcome, error) {
	tier := tierLabel(req.Tier)
	ctx, span := s.start(ctx, "staging.job", attrImageID.String(req.ImageID), attrTier.String(tier),
		attrRoomType.String(req.RoomType), attrStyle.String(req.Style), attrUpscale.Bool(req.Upscale))
	out, err := s.stage(ctx, req)
	defer func() { end(span, err) }()
	outcome := "ok"
	switch {
	case err != nil:
		outcome = string(fault.CodeOf(err))
	case out.Replay:
		outcome = "replay"
	}
	name := out.Backend
	if name == "" {
		// Failed before a backend answered: count it where it was routed.
		name = s.backends.route(req.ImageID)
	}
	s.metrics.Jobs.WithLabelValues(name, outcome, tier).Inc()
	span.SetAttributes(attrBackend.String(name), attrOutcome.String(outcome), attrReplay.Bool(out.Replay))
	if err == nil {
		span.SetAttributes(attrModelRev.String(out.ModelRev), attrSeed.Int64(int64(out.Seed)),
			attrWidth.Int(out.Width), attrHeight.Int(out.Height))
	}
	return out, err
}

// outcomes are the values of the jobs counter's outcome label: a success,
// a replay, and every code Stage returns.
var outcomes = []string{
	"ok", "replay",
	string(fault.InvalidInput), string(fault.Forbidden), string(fault.NotFound), string(fault.IdempotencyConflict),
	string(fault.InProgress), string(fault.PayloadTooLarge), string(fault.UnsupportedMediaType), string(fault.ImageTooLarge),
	string(fault.ContentRejected), string(fault.Overloaded), string(fault.Unavailable), string(fault.OOM), string(fault.Timeout),
	string(fault.ProviderError), string(fault.Internal), string(fault.Canceled),
}

// precount creates every series of the jobs counter at zero, so that the
// first failure of a kind is an increase that rate() sees, not a series
// that appears at 1.
func precount(m *telemetry.StagingMetrics, b Backends) {
	for name := range b.ByName {
		for _, o := range outcomes {
			for _, tier := range telemetry.Tiers {
				if tier != "unknown" {
					m.Jobs.WithLabelValues(name, o, tier)
				}
			}
		}
		m.Jobs.WithLabelValues(name, string(fault.InvalidInput), "unknown")
	}
}

// tierLabel is the tier label of a request's tier: "unknown" for one that
// is not a tier, which validation refuses.
func tierLabel(t string) string {
	tier, err := admission.ParseTier(t)
	if err != nil {
		return "unknown"
	}
	return string(tier)
}

func (s *Service) stage(ctx context.Context, req Request) (Outcome, error) {
	_, span := s.start(ctx, "staging.validate")
	p, err := s.validate.plan(req)
	end(span, err)
	if err != nil {
		return Outcome{}, err
	}
	for {
		c, leader := s.join(p)
		if leader {
			rec, fresh, err := s.execute(ctx, p)
			s.leave(p, c, rec, err)
			if err != nil {
				return Outcome{}, err
			}
			return Outcome{Response: rec.Response, Replay: !fresh, Backend: rec.Response.Backend, BackendTime: rec.backendTime, EngineTime: rec.engineTime}, nil
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			return Outcome{}, contextFault(ctx)
		}
		switch {
		case c.err == nil && p.matches(c.rec):
			s.metrics.Shared.Inc()
			return Outcome{Response: c.rec.Response, Replay: true, Backend: c.rec.Response.Backend}, nil
		case c.err == nil:
			return Outcome{}, conflict(p)
		case c.plan.sameJob(p) && !isContextFault(c.err):
			// The same job failed a moment ago for a reason that is not the
			// other client's own deadline or disconnect: share the answer
			// rather than hammer a failing dependency.
			return Outcome{}, c.err
		}
		// The execution we waited for was another job that failed, or its
		// client went away: run our own.
	}
}

// join returns the execution in flight for p's record key, or registers a
// new one led by the caller.
func (s *Service) join(p plan) (c *call, leader bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.calls[p.recordKey]; ok {
		return c, false
	}
	c = &call{done: make(chan struct{}), plan: p}
	s.calls[p.recordKey] = c
	return c, true
}

func (s *Service) leave(p plan, c *call, rec record, err error) {
	s.mu.Lock()
	delete(s.calls, p.recordKey)
	s.mu.Unlock()
	c.rec, c.err = rec, err
	close(c.done)
}

// execute answers p from its record, or runs it. fresh reports whether the
// backend ran.
//
// The order keeps both promises of the service: a replay (or a conflict)
// never waits for a GPU place nor is refused for want of one, and a job
// that is refused costs at most one record read. See admitOrLookup.
func (s *Service) execute(ctx context.Context, p plan) (rec record, fresh bool, err error) {
	start := time.Now()
	g, found, err := s.admitOrLookup(ctx, p)
	if err != nil {
		return record{}, false, err
	}
	// Paths that end before the backend ran free the place unused.
	defer g.release(admission.Report{})
	if found != nil {
		return answerFrom(p, *found)
	}
	// The inputs are read while the claim is taken and the record read
	// again: each is a storage round trip, and a job that then finds the
	// claim taken or the record written has only wasted a read.
	inputs := s.prepareAsync(ctx, p)
	held, err := s.takeClaim(ctx, p)
	if err != nil {
		inputs.abandon()
		return record{}, false, err
	}
	// Another replica may have finished the job between our record read
	// and our claim: it writes the record before it lets go of its claim,
	// so the record is there to read now.
	if found, err := s.lookup(ctx, p); err != nil || found != nil {
		inputs.abandon()
		held.drop(ctx)
		if err != nil {
			return record{}, false, err
		}
		return answerFrom(p, *found)
	}
	job, err := inputs.wait()
	if err == nil {
		rec, err = s.run(ctx, p, g, start, job)
	}
	if err != nil {
		held.drop(ctx)
		return record{}, false, err
	}
	held.done(ctx)
	return rec, true, nil
}

// preparing is a prepare running on its own goroutine, which the caller
// always ends with wait or abandon.
type preparing struct {
	done   chan struct{}
	cancel context.CancelFunc
	job    backend.Job
	err    error
}

// prepareAsync starts prepare(ctx, p).
func (s *Service) prepareAsync(ctx context.Context, p plan) *preparing {
	ctx, cancel := context.WithCancel(ctx)
	pr := &preparing{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(pr.done)
		pr.job, pr.err = s.prepare(ctx, p)
	}()
	return pr
}

// wait returns the prepared job.
func (pr *preparing) wait() (backend.Job, error) {
	<-pr.done
	pr.cancel()
	return pr.job, pr.err
}

// abandon stops the prepare and waits for its goroutine to end.
func (pr *preparing) abandon() {
	pr.cancel()
	<-pr.done
}

// answerFrom replays rec for p, or refuses p as a conflict.
func answerFrom(p plan, rec record) (record, bool, error) {
	if !p.matches(rec) {
		return record{}, false, conflict(p)
	}
	return rec, false, nil
}

// run runs p's prepared job on the backend g routed it to and writes the
// staged image, then the record.
func (s *Service) run(ctx context.Context, p plan, g gate, start time.Time, job backend.Job) (record, error) {
	be, ok := s.backends.ByName[g.backend]
	if !ok {
		return record{}, fault.New(fault.Unavailable, "backend %q is not configured", g.backend)
	}
	bctx, span := s.start(ctx, "backend."+be.Name(), attrBackend.String(be.Name()))
	ran := time.Now()
	res, err := be.Stage(bctx, job)
	backendTime := time.Since(ran)
	s.checked(span, res, err)
	end(span, err)
	g.release(admission.Report{Duration: backendTime, PeakGPUBytes: res.PeakGPUMemoryBytes, Megapixels: float64(res.Width*res.Height) / 1e6})
	producer := producerOf(be.Name(), res)
	s.count(producer, res, backendTime, p.tier)
	if err != nil {
		if ctx.Err() != nil {
			return record{}, contextFault(ctx)
		}
		return record{}, err
	}
	if err := s.disclose(ctx, &res, p.params.Label); err != nil {
		return record{}, err
	}
	if err := s.put(ctx, p.stagedKey, res.Image, storage.PutOptions{
		ContentType: res.ContentType, CacheControl: s.opts.StagedCacheControl,
	}); err != nil {
		return record{}, s.storageFault(ctx, err, "writing "+p.stagedKey)
	}
	// The answer's seed is the one that made the image (a structure retry
	// uses the next ones); the record keeps the job's too, which requests
	// are matched against.
	seed := job.Seed
	if res.Seed != nil {
		seed = *res.Seed
	}
	rec := record{
		Version: recordVersion, ImageID: p.imageID, Params: p.params,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond), JobSeed: &job.Seed,
		Response: Response{
			StagedKey: p.stagedKey, Width: res.Width, Height: res.Height, ModelRev: res.ModelRev,
			Seed: seed, DurationMS: time.Since(start).Milliseconds(), Warnings: res.Warnings,
			Backend: producer,
		},
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return record{}, fault.Wrap(err, fault.Internal, "encoding the idempotency record failed")
	}
	// The record is written last: a job that fails before this point leaves
	// no record, so its retry runs again.
	if err := s.put(ctx, p.recordKey, data, storage.PutOptions{
		ContentType: "application/json", CacheControl: "no-store",
	}); err != nil {
		return record{}, s.storageFault(ctx, err, "writing "+p.recordKey)
	}
	observe(ctx, s.metrics.Duration.WithLabelValues(producer, telemetry.SizeLabel(float64(res.Width*res.Height))),
		time.Since(start).Seconds())
	for _, ph := range res.Phases {
		s.metrics.Phases.WithLabelValues(ph.Name).Observe(ph.Duration.Seconds())
	}
	rec.backendTime, rec.engineTime = backendTime, res.EngineTime
	return rec, nil
}

// disclose marks res's image as AI-altered, labelled when label is set,
// before it is written: every staged image says what it is. An image that
// must be decoded for it takes its pixels from the decode budget first.
func (s *Service) disclose(ctx context.Context, res *backend.Result, label bool) error {
	d := s.opts.Discloser
	if d == nil {
		return nil
	}
	ctx, span := s.start(ctx, "disclosure.apply", attrLabel.Bool(label))
	var err error
	defer func() { end(span, err) }()
	// When the disclosure decodes (to draw the label, to re-encode a PNG,
	// or to turn upright an image that relies on its EXIF orientation), the
	// pixels come from the decode budget first.
	reserve := func(pixels int64) (func(), error) { return s.opts.DecodeBudget.Acquire(ctx, pixels) }
	out, aerr := d.Apply(res.Image, label, reserve)
	if aerr != nil {
		if ctx.Err() != nil {
			// Waiting for the budget (or decoding) outlived the request.
			err = contextFault(ctx)
			return err
		}
		err = fault.Wrap(aerr, fault.Internal, "marking the staged image as virtually staged failed")
		return err
	}
	res.Image, res.ContentType = out, "image/jpeg"
	return nil
}

// observe records v in o, with the trace id of ctx's span as an exemplar
// when the span is sampled, so a slow bucket leads to its trace.
func observe(ctx context.Context, o prometheus.Observer, v float64) {
	sc := trace.SpanContextFromContext(ctx)
	if eo, ok := o.(prometheus.ExemplarObserver); ok && sc.IsSampled() {
		eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": sc.TraceID().String()})
		return
	}
	o.Observe(v)
}

// count adds a backend call's time and price to the cost metrics, under
// name, the backend that did the work (producerOf).
func (s *Service) count(name string, res backend.Result, took time.Duration, tier admission.Tier) {
	billed := took
	if res.BilledTime > 0 {
		billed = res.BilledTime
	}
	s.metrics.BackendSeconds.WithLabelValues(name, string(tier)).Add(billed.Seconds())
	price := s.opts.Prices[name]
	s.metrics.Cost.WithLabelValues(name, string(tier)).Add(price.PerRun + price.PerSecond*billed.Seconds())
}

// producerOf names the backend that produced res: the one called, unless
// it answered for another (a managed call that fell back to mock).
func producerOf(called string, res backend.Result) string {
	if res.Backend != "" {
		return res.Backend
	}
	return called
}

// prepare reads and checks the inputs and resolves every job parameter.
func (s *Service) prepare(ctx context.Context, p plan) (backend.Job, error) {
	img, info, err := s.readImage(ctx, "original_key", p.params.OriginalKey)
	if err != nil {
		return backend.Job{}, err
	}
	s.metrics.InputBytes.Observe(float64(len(img)))
	job := backend.Job{
		ID: p.imageID, Image: img, Info: info,
		Strength: p.params.Strength, GuidanceScale: p.params.GuidanceScale,
		ControlNetConditioningScale: s.catalog.Defaults.ControlNetConditioningScale,
		OutputLongSide:              s.opts.OutputLongSide,
	}
	if p.params.Upscale {
		job.UpscaleLongSide = s.opts.Upscale.LongSide
	}
	if p.params.MaskKey != "" {
		mask, minfo, err := s.readImage(ctx, "mask_key", p.params.MaskKey)
		if err != nil {
			return backend.Job{}, err
		}
		mw, mh := minfo.OrientedSize()
		ow, oh := info.OrientedSize()
		if mw != ow || mh != oh {
			return backend.Job{}, fault.New(fault.InvalidInput, "the mask is %dx%d but the original is %dx%d; they must match", mw, mh, ow, oh)
		}
		if err := s.verifyMask(ctx, mask, minfo); err != nil {
			return backend.Job{}, err
		}
		job.Mask = mask
	}
	if job.Prompt, job.NegativePrompt, err = s.catalog.Prompts(p.params.RoomType, p.params.Style); err != nil {
		return backend.Job{}, fault.Wrap(err, fault.Internal, "expanding the prompt failed")
	}
	if s.opts.RecordPrompts {
		trace.SpanFromContext(ctx).SetAttributes(attrPrompt.String(job.Prompt), attrNegPrompt.String(job.NegativePrompt))
	}
	if p.seed != nil {
		job.Seed = *p.seed
	} else {
		job.Seed = s.drawSeed()
	}
	return job, nil
}

// readImage reads an input and checks its header: sniffed format and pixel
// count, before any pixel is decoded.
func (s *Service) readImage(ctx context.Context, field, key string) ([]byte, imagecheck.Info, error) {
	data, err := s.get(ctx, key, s.opts.MaxInputBytes)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, imagecheck.Info{}, fault.Wrap(err, fault.NotFound, "%s %s does not exist", field, quote(key))
	case errors.Is(err, storage.ErrTooLarge):
		return nil, imagecheck.Info{}, fault.Wrap(err, fault.PayloadTooLarge, "%s %s is larger than the %d bytes allowed (MAX_INPUT_BYTES)", field, quote(key), s.opts.MaxInputBytes)
	case err != nil:
		return nil, imagecheck.Info{}, s.storageFault(ctx, err, "reading "+field)
	}
	_, span := s.start(ctx, "imagecheck.inspect")
	info, err := imagecheck.Inspect(data, s.opts.MaxInputPixels)
	span.SetAttributes(attrFormat.String(string(info.Format)), attrPixels.Int64(info.Pixels()))
	span.End()
	switch {
	case errors.Is(err, imagecheck.ErrUnsupported):
		return nil, info, fault.Wrap(err, fault.UnsupportedMediaType, "%s is not a JPEG, PNG or WebP image (the content decides, not the extension)", field)
	case errors.Is(err, imagecheck.ErrTooManyPixels):
		return nil, info, fault.Wrap(err, fault.ImageTooLarge, "%s is %dx%d, more than the %d pixels allowed (MAX_INPUT_PIXELS)", field, info.Width, info.Height, s.opts.MaxInputPixels)
	case err != nil:
		return nil, info, fault.Wrap(err, fault.InvalidInput, "%s is not a readable image: its header is truncated or corrupt", field)
	}
	return data, info, nil
}

// verifyMask decodes the whole mask, so that a mask whose header is fine
// but whose data is not is refused here, the same way whichever backend the
// job goes to (the engine would refuse it, mock and managed would not), and
// never recorded by one backend for another to replay. Masks are small next
// to the work of any backend but mock, which ignores them; the decode waits
// for its pixels in the shared decode budget.
func (s *Service) verifyMask(ctx context.Context, mask []byte, info imagecheck.Info) error {
	release, err := s.opts.DecodeBudget.Acquire(ctx, info.Pixels())
	if err != nil {
		return contextFault(ctx)
	}
	defer release()
	_, span := s.start(ctx, "imagecheck.verify_mask")
	_, err = imagecheck.Verify(mask, s.opts.MaxInputPixels)
	span.End()
	switch {
	case errors.Is(err, imagecheck.ErrUnsupported):
		return fault.Wrap(err, fault.UnsupportedMediaType, "mask_key uses an image feature that cannot be decoded")
	case err != nil:
		return fault.Wrap(err, fault.InvalidInput, "mask_key is not a readable image: its data is truncated or corrupt")
	}
	return nil
}

// lookup reads p's record: nil when there is none.
func (s *Service) lookup(ctx context.Context, p plan) (rec *record, err error) {
	ctx, span := s.start(ctx, "staging.record_lookup")
	defer func() {
		span.SetAttributes(attrRecordSeen.Bool(rec != nil))
		end(span, err)
	}()
	data, err := s.get(ctx, p.recordKey, maxRecordBytes)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, s.storageFault(ctx, err, "reading the idempotency record")
	}
	var found record
	if err := json.Unmarshal(data, &found); err != nil || found.Version != recordVersion || found.ImageID != p.imageID {
		// A record we cannot trust must not be replayed nor silently
		// overwritten: a person has to look at it.
		s.log.ErrorContext(ctx, "unreadable idempotency record", "key", p.recordKey, "error", err)
		return nil, fault.New(fault.Internal, "the idempotency record for image_id %s is unreadable", quote(p.imageID))
	}
	return &found, nil
}

func (s *Service) get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	ctx, span := s.start(ctx, "storage.get", attrKey.String(key))
	start := time.Now()
	data, err := s.store.Get(ctx, key, maxBytes)
	result := storageResult(err)
	s.metrics.StorageDuration.WithLabelValues("get", result).Observe(time.Since(start).Seconds())
	storageEnd(span, result, len(data), err)
	return data, err
}

// put writes key and times it; like get, it returns the store's own error,
// which the caller classifies (a claim that exists is no failure).
func (s *Service) put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	ctx, span := s.start(ctx, "storage.put", attrKey.String(key))
	start := time.Now()
	err := s.store.Put(ctx, key, data, opts)
	result := storageResult(err)
	s.metrics.StorageDuration.WithLabelValues("put", result).Observe(time.Since(start).Seconds())
	storageEnd(span, result, len(data), err)
	return err
}

// storageEnd ends a storage span: a missing object, one too large, or a
// claim already taken are answers, not failures of the store.
func storageEnd(span trace.Span, result string, n int, err error) {
	span.SetAttributes(attrResult.String(result), attrBytes.Int(n))
	if result == "error" {
		span.RecordError(err)
		span.SetStatus(codes.Error, "storage failed")
	}
	span.End()
}

func storageResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, storage.ErrNotFound):
		return "not_found"
	case errors.Is(err, storage.ErrTooLarge):
		return "too_large"
	case errors.Is(err, storage.ErrExists):
		return "exists"
	}
	return "error"
}

// storageFault classifies a storage error that is not a missing or
// oversized object. A key the store can never serve is the client's error;
// anything else may be transient: the cause stays in the logs, and the
// client learns only that storage failed and may be retried.
func (s *Service) storageFault(ctx context.Context, err error, what string) error {
	if ctx.Err() != nil {
		return contextFault(ctx)
	}
	if f := permanentStorageFault(err, what); f != nil {
		s.log.WarnContext(ctx, "storage refused a key", "op", what, "error", err)
		return f
	}
	s.log.ErrorContext(ctx, "storage failed", "op", what, "error", err)
	e := fault.Wrap(err, fault.Internal, "storage failed while %s", what)
	e.Retryable = true
	return e
}

// permanentStorageFault maps the store's conditions that no retry can
// change, all caused by the keys a client chose, to client errors; it
// returns nil for any other error.
func permanentStorageFault(err error, what string) *fault.Error {
	switch {
	case errors.Is(err, storage.ErrOutsideStore):
		return fault.Wrap(err, fault.Forbidden, "storage refused %s: the key leads outside the store", what)
	case errors.Is(err, storage.ErrNotObject):
		return fault.Wrap(err, fault.InvalidInput, "storage refused %s: what lies under the key is not a regular file", what)
	case errors.Is(err, storage.ErrNameTooLong):
		return fault.Wrap(err, fault.InvalidInput, "storage refused %s: a segment of the key is longer than the store allows", what)
	case errors.Is(err, storage.ErrInvalidKey):
		return fault.Wrap(err, fault.InvalidInput, "storage refused %s: the key breaks the key policy", what)
	}
	return nil
}

func conflict(p plan) error {
	return fault.New(fault.IdempotencyConflict,
		"image_id %s was already used with other parameters; use a new image_id for a new job", quote(p.imageID))
}

// contextFault turns a finished context into the error the client (if still
// there) sees.
func contextFault(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fault.Wrap(err, fault.Timeout, "the request did not finish within its deadline (REQUEST_TIMEOUT)")
	}
	return fault.Wrap(err, fault.Canceled, "the client went away")
}

func isContextFault(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

const (
	recordVersion  = 1
	maxRecordBytes = 64 << 10
)

// record is the idempotency record stored beside the staged image.
type record struct {
	Version   int       `json:"version"`
	ImageID   string    `json:"image_id"`
	Params    params    `json:"params"`
	CreatedAt time.Time `json:"created_at"`
	// JobSeed is the seed the job was run with, asked for or drawn; the
	// answer's seed differs when a structure retry made the image. Records
	// written before it existed lack it: their job's seed is the answer's.
	JobSeed  *uint32  `json:"job_seed,omitempty"`
	Response Response `json:"response"`

	// backendTime and engineTime are the fresh run's backend time and the
	// engine's share of it; they are not stored.
	backendTime, engineTime time.Duration
}
