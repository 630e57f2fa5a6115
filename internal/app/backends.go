package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/engine"
	"github.com/vstage/vstage/internal/gpu"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/managed"
	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/rollout"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/telemetry"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// backends are the backends built from the configuration, with what runs
// beside them.
type backends struct {
	staging staging.Backends
	router  *rollout.Router
	// engine, gpu and admission exist in self mode only.
	engine    *engine.Supervisor
	gpu       *gpu.Monitor
	admission *admission.Controller
}

// buildBackends builds mock (always), self (when INFERENCE_MODE is self)
// and managed (when a model version is configured), and the router between
// them. Only self jobs pass admission: they are the ones on this pod's GPU.
// Mock decodes within the decode budget.
func buildBackends(cfg config.Config, log *slog.Logger, reg prometheus.Registerer, decode *imagecheck.Budget, tr *telemetry.Tracing) (*backends, error) {
	mock := &backend.Mock{MaxPixels: cfg.MaxInputPixels, Quality: cfg.OutputJPEGQuality, Budget: decode}
	b := &backends{}
	byName := map[string]backend.Backend{mock.Name(): mock}
	var available []mode.Mode

	if cfg.Mode == mode.Self {
		if err := b.buildSelf(cfg, log, reg, byName, tr); err != nil {
			return nil, err
		}
		available = append(available, mode.Self)
	}
	if cfg.Managed.Version != "" {
		mb, err := buildManaged(cfg, log, reg, mock, tr)
		if err != nil {
			return nil, err
		}
		byName[mb.Name()] = mb
		available = append(available, mode.Managed)
	}

	initial := rollout.State{Enabled: cfg.Rollout.Enabled, Mode: cfg.Mode, CanaryPercent: cfg.Rollout.CanaryPercent}
	if cfg.Rollout.File != "" {
		// The file wins over the variables, so a restart keeps the last
		// change an operator made there.
		s, err := rollout.LoadFile(cfg.Rollout.File)
		if err != nil {
			return nil, fmt.Errorf("ROLLOUT_FILE: %w", err)
		}
		initial = s
	}
	router, err := rollout.NewRouter(initial, rollout.WithAvailable(available...), rollout.WithLogger(log.With("component", "rollout")))
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	b.router = router
	b.staging = staging.Backends{ByName: byName, Route: func(imageID string) string { return string(router.Route(imageID)) }, Admit: b.admit}
	return b, nil
}

// contentPolicies maps CONTENT_POLICY to the protocol's policy.
var contentPolicies = map[string]enginev1.ContentPolicy{
	config.ContentOff:    enginev1.ContentPolicy_CONTENT_POLICY_OFF,
	config.ContentWarn:   enginev1.ContentPolicy_CONTENT_POLICY_WARN,
	config.ContentReject: enginev1.ContentPolicy_CONTENT_POLICY_REJECT,
}

func (b *backends) buildSelf(cfg config.Config, log *slog.Logger, reg prometheus.Registerer, byName map[string]backend.Backend, tr *telemetry.Tracing) error {
	n := cfg.Admission.Concurrency
	sup, err := engine.New(engine.Options{
		Python:    cfg.Engine.Python,
		Module:    cfg.Engine.Module,
		ModelDir:  cfg.Engine.ModelDir,
		TinyModel: cfg.Engine.TinyModel,
		Device:    cfg.Engine.Device,
		// The warm-up renders what the jobs will ask for.
		WarmupLongSide: cfg.OutputLongSide,
		// The engine runs as many jobs as admission lets through, and a
		// place is held until the engine says a job has ended.
		Args:          []string{"--concurrency", strconv.Itoa(n)},
		Slots:         n,
		StartTimeout:  cfg.Engine.StartTimeout,
		HealthTimeout: cfg.Engine.HealthTimeout,
		StopGrace:     cfg.Engine.StopGrace,
		WedgeGrace:    cfg.Engine.WedgeGrace,
		MaxRSS:        uint64(cfg.Engine.MaxRSS),
		MaxJobs:       cfg.Engine.MaxJobs,
		BackoffMin:    cfg.Engine.BackoffMin,
		BackoffMax:    cfg.Engine.BackoffMax,
		// The engine exports its own spans under its own name, to wherever
		// the OTEL_* variables it inherits say.
		Env:            []string{"OTEL_SERVICE_NAME=" + telemetry.EngineServiceName},
		TracerProvider: tr.Provider,
		Propagator:     tr.Propagator,
		Logger:         log.With("component", "engine"),
		Registerer:     reg,
	})
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	checks := cfg.Checks
	self, err := backend.NewSelf(sup, backend.SelfOptions{
		Steps: cfg.Engine.Steps, Quality: cfg.OutputJPEGQuality,
		ContentPolicy: contentPolicies[checks.ContentPolicy], StructureMin: checks.StructureMin, StructureRetries: checks.Retries,
	})
	if err != nil {
		return fmt.Errorf("self backend: %w", err)
	}
	// The engine runs the checks; mock and managed jobs pass unchecked,
	// which the log says once rather than every job.
	log.Info("engine checks", "content_policy", checks.ContentPolicy, "structure_min", checks.StructureMin,
		"structure_retries", checks.Retries, "checked_backends", string(mode.Self))
	mon, err := gpu.New(gpu.Options{
		Interval:        cfg.GPU.SampleInterval,
		EnginePID:       func() int { return sup.Status().PID },
		Device:          cfg.GPU.Device,
		Dedicated:       cfg.GPU.Dedicated,
		MaxEngineMemory: uint64(cfg.GPU.MaxEngineMemory),
		Idle:            func() bool { return sup.Status().InFlight == 0 },
		Recycler:        sup,
		Logger:          log.With("component", "gpu"),
		Registerer:      reg,
	})
	if err != nil {
		return fmt.Errorf("gpu: %w", err)
	}
	ctrl, err := admission.New(admission.Options{
		Concurrency:          n,
		QueueDepth:           cfg.Admission.QueueDepth,
		QueueTimeout:         cfg.Admission.QueueTimeout,
		FreeQueueShare:       cfg.Admission.FreeQueueShare,
		DurationPerMegapixel: cfg.Admission.DurationPerMegapixel,
		VRAM:                 mon,
		VRAMHeadroom:         uint64(cfg.Admission.VRAMHeadroom),
		VRAMBase:             uint64(cfg.Admission.VRAMBase),
		VRAMPerMegapixel:     uint64(cfg.Admission.VRAMPerMegapixel),
		Ready:                sup.Ready,
		Registerer:           reg,
	})
	if err != nil {
		return fmt.Errorf("admission: %w", err)
	}
	b.engine, b.gpu, b.admission = sup, mon, ctrl
	byName[self.Name()] = self
	return nil
}

func buildManaged(cfg config.Config, log *slog.Logger, reg prometheus.Registerer, mock backend.Backend, tr *telemetry.Tracing) (*managed.Backend, error) {
	m := cfg.Managed
	token, err := managed.ReadToken(m.Token, m.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("managed provider token: %w", err)
	}
	open := promauto.With(reg).NewGauge(prometheus.GaugeOpts{
		Name: prometheus.BuildFQName(telemetry.Namespace, "managed", "circuit_open"),
		Help: "1 while the managed provider's circuit breaker is open (calls paused), 0.5 while half-open, 0 while closed.",
	})
	// The provider's calls are client spans only while spans are recorded:
	// with tracing off the transport stays bare, as the S3 client's does.
	var client *http.Client
	if tp := tr.Recording(); tp != nil {
		client = managed.TracedClient(tp)
	}
	mb, err := managed.New(managed.Options{
		HTTPClient: client,
		BaseURL:    m.BaseURL, Version: m.Version, Token: token,
		CallTimeout: m.CallTimeout, Wait: m.Wait, PollInterval: m.PollInterval, MaxAttempts: m.MaxAttempts,
		BreakerFailures: uint32(m.BreakerFailures), BreakerOpenTimeout: m.BreakerOpenTimeout,
		FallbackToMock: m.FallbackToMock, Fallback: mock,
		Logger: log.With("component", "managed"),
		OnCircuitChange: func(_, to string) {
			switch to {
			case "open":
				open.Set(1)
			case "half-open":
				open.Set(0.5)
			default:
				open.Set(0)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("managed backend: %w", err)
	}
	return mb, nil
}

// admit is the staging admission hook: self jobs take a place on the GPU;
// jobs for mock and the hosted provider need none.
func (b *backends) admit(ctx context.Context, name string, req admission.Request) (func(admission.Report), error) {
	if name != string(mode.Self) || b.admission == nil {
		return func(admission.Report) {}, nil
	}
	t, err := b.admission.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return t.Release, nil
}

// engineInfo is what the engine said about itself when it was last ready,
// for /readyz; nil without an engine or before it was first ready.
func (b *backends) engineInfo() map[string]string {
	if b.engine == nil {
		return nil
	}
	info := b.engine.Info()
	if info == nil {
		return nil
	}
	return map[string]string{"model_rev": info.GetModelRev(), "backend": info.GetBackend(), "device": info.GetDevice()}
}

// ready says whether the backend the current rollout sends real jobs to can
// take them: the engine's live state when that is self, otherwise yes (mock
// needs nothing, and one provider's trouble must not pull every pod out of
// service).
func (b *backends) ready(context.Context) error {
	s := b.router.Get()
	if b.engine != nil && s.Enabled && s.Mode == mode.Self && s.CanaryPercent > 0 {
		return b.engine.Ready()
	}
	return nil
}
