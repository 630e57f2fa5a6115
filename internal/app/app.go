// Package app wires the sidecar's parts together and runs them until the
// context ends: the store, the backends and the router between them, the
// engine's supervisor, GPU monitoring and admission, the staging service,
// the HTTP and admin APIs, and the graceful drain on shutdown.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/vstage/vstage/internal/api"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/disclosure"
	"github.com/vstage/vstage/internal/httpjson"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/rollout"
	"github.com/vstage/vstage/internal/sample"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/storage"
	"github.com/vstage/vstage/internal/telemetry"
)

// tracerName is the instrumentation scope of the sidecar's own spans.
const tracerName = "github.com/vstage/vstage"

// App is the wired sidecar.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	store    storage.Store
	api      *api.Server
	handler  http.Handler
	backends *backends
	admin    http.Handler // nil without an admin listener
}

// New builds the sidecar's parts from cfg: it opens the store (and seeds
// the demo photo when cfg.SeedDemo is set), the backends and the router
// between them, the staging service, the API and the admin API. Nothing
// runs until Serve.
func New(ctx context.Context, cfg config.Config, log *slog.Logger, tr *telemetry.Tracing) (*App, error) {
	if cfg.Rollout.AdminAddr != "" {
		if err := rollout.CheckAdminAddr(cfg.Rollout.AdminAddr, cfg.Rollout.AdminToken); err != nil {
			return nil, err
		}
	}
	store, err := storage.Open(ctx, cfg.StorageURL, storage.Options{
		S3Endpoint: cfg.S3Endpoint, S3ForcePathStyle: cfg.S3ForcePathStyle,
		S3AttemptTimeout: cfg.S3AttemptTimeout, S3MaxAttempts: cfg.S3MaxAttempts, S3MaxBackoff: cfg.S3MaxBackoff,
		TracerProvider: tr.Recording(), Propagator: tr.Propagator,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	a, err := build(ctx, cfg, log, store, tr)
	if err != nil {
		_ = store.Close()
		return nil, err
	}
	return a, nil
}

func build(ctx context.Context, cfg config.Config, log *slog.Logger, store storage.Store, tr *telemetry.Tracing) (*App, error) {
	if cfg.SeedDemo {
		if err := seedDemo(ctx, store); err != nil {
			return nil, fmt.Errorf("seed the demo photo: %w", err)
		}
	}
	reg := telemetry.NewRegistry()
	cat := catalog.Default()
	// One decode budget for the whole process: mock jobs and mask checks
	// draw on it together.
	decode := imagecheck.NewBudget(cfg.DecodePixelBudget)
	bs, err := buildBackends(cfg, log, reg, decode, tr)
	if err != nil {
		return nil, err
	}
	// An output is never decoded past what the sidecar decodes at once.
	disc, err := disclosure.New(cfg.Disclosure.Text, cfg.OutputJPEGQuality, cfg.DecodePixelBudget)
	if err != nil {
		return nil, fmt.Errorf("DISCLOSURE_TEXT: %w", err)
	}
	svc := staging.New(store, bs.staging, cat, staging.Options{
		AllowedPrefixes:    cfg.AllowedPrefixes,
		StagedKey:          cfg.StagedKey,
		StagedCacheControl: cfg.StagedCacheControl,
		MaxInputBytes:      cfg.MaxInputBytes,
		MaxInputPixels:     cfg.MaxInputPixels,
		OutputLongSide:     cfg.OutputLongSide,
		DecodeBudget:       decode,
		Prices:             prices(cfg),
		Discloser:          disc,
		LabelDefault:       cfg.Disclosure.LabelDefault,
		Upscale:            cfg.Upscale,
		Tracer:             tr.Provider.Tracer(tracerName),
		RecordPrompts:      cfg.Tracing.RecordPrompts,
	}, telemetry.NewStagingMetrics(reg), log)
	srv := api.New(svc, cat, reg, telemetry.NewHTTPMetrics(reg), log, api.Options{
		MaxBodyBytes:   cfg.MaxBodyBytes,
		RequestTimeout: cfg.RequestTimeout,
		Mode:           cfg.Mode,
		Ready:          bs.ready,
		Engine:         bs.engineInfo,
		TracerProvider: tr.Recording(),
		Propagator:     tr.Propagator,
	})
	a := &App{cfg: cfg, log: log, store: store, api: srv, handler: srv.Handler(), backends: bs}
	if cfg.Rollout.AdminAddr != "" {
		a.admin = rollout.NewAdminHandler(bs.router, cfg.Rollout.AdminToken, log.With("component", "admin"))
	}
	return a, nil
}

// prices prices the backends from the cost settings: a self-mode job takes
// one of CONCURRENCY places on the GPU, so its second costs that share of
// the GPU's.
func prices(cfg config.Config) map[string]staging.Price {
	return map[string]staging.Price{
		string(mode.Self):    {PerSecond: cfg.Cost.GPUHour / 3600 / float64(max(cfg.Admission.Concurrency, 1))},
		string(mode.Managed): {PerSecond: cfg.Cost.ManagedPerSecond, PerRun: cfg.Cost.ManagedPerRun},
	}
}

// Handler returns the HTTP routes.
func (a *App) Handler() http.Handler { return a.handler }

// ServeOptions are the optional parts of Serve.
type ServeOptions struct {
	// Admin listens for the admin API; it must be set when the
	// configuration has an admin address, and is closed by Serve.
	Admin net.Listener
	// Reload receives a value (SIGHUP) each time the rollout file must be
	// read again; nil means never.
	Reload <-chan os.Signal
	// Banner, when not nil, receives a human-readable hint with the address
	// and a curl command once the listener is up.
	Banner io.Writer
}

// Serve answers on ln until ctx is done, then drains: readiness turns off,
// new jobs get 503, and requests in flight get cfg.ShutdownTimeout to
// finish. It runs, for as long, the engine's supervisor and the GPU
// monitor (self mode), the admin API and the rollout reloads, and stops the
// engine only after the drain, so jobs in flight keep their engine. It
// closes the listeners and the store, and returns nil after a clean drain.
func (a *App) Serve(ctx context.Context, ln net.Listener, opts ServeOptions) error {
	defer func() {
		if err := a.store.Close(); err != nil {
			a.log.Warn("closing storage", "error", err)
		}
	}()
	if a.admin != nil && opts.Admin == nil {
		_ = ln.Close()
		return errors.New("serve: the admin API is configured but has no listener")
	}
	// The background parts live until the drain is over, not until ctx
	// ends, so they get a context of their own.
	bg := newBackground(context.WithoutCancel(ctx), a.log)
	defer bg.stop()
	a.startBackground(bg, opts)

	hs := a.httpServer(a.handler, a.cfg.RequestTimeout+10*time.Second)
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(httpjson.NewListener(ln, hs.MaxHeaderBytes)) }()
	a.announce(ln, opts)

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	return a.drain(hs, serveErr)
}

// httpServer returns a server for h with the listener limits; writeTimeout
// bounds the time to answer one request.
func (a *App) httpServer(h http.Handler, writeTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		// Without it, net/http holds up to 1 MiB per client that trickles a
		// header in until ReadHeaderTimeout.
		MaxHeaderBytes: int(a.cfg.MaxHeaderBytes),
		ErrorLog:       slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
}

// startBackground starts, on bg, what runs beside the API: the engine's
// supervisor and the GPU monitor (self mode), the rollout reloads and the
// admin API.
func (a *App) startBackground(bg *background, opts ServeOptions) {
	if b := a.backends; b.engine != nil {
		bg.run("engine", b.engine.Run)
		bg.run("gpu", b.gpu.Run)
	}
	if opts.Reload != nil {
		bg.run("rollout reload", func(ctx context.Context) error {
			if a.cfg.Rollout.File == "" {
				drainSignals(ctx, opts.Reload, func() { a.log.Warn("SIGHUP ignored: no ROLLOUT_FILE is configured") })
				return nil
			}
			a.backends.router.ReloadOn(ctx, opts.Reload, a.cfg.Rollout.File)
			return nil
		})
	}
	if a.admin != nil {
		admin := a.httpServer(a.admin, 10*time.Second)
		admin.ReadHeaderTimeout, admin.ReadTimeout = 5*time.Second, 10*time.Second
		bg.run("admin", func(ctx context.Context) error {
			served := make(chan error, 1)
			go func() { served <- admin.Serve(httpjson.NewListener(opts.Admin, admin.MaxHeaderBytes)) }()
			select {
			case err := <-served:
				return err
			case <-ctx.Done():
				_ = admin.Close()
				if err := <-served; !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			}
		})
	}
}

// announce logs the listening addresses and prints the banner.
func (a *App) announce(ln net.Listener, opts ServeOptions) {
	cfg := a.cfg
	attrs := []any{"addr", ln.Addr().String(), "mode", cfg.Mode, "storage", redactURL(cfg.StorageURL),
		"rollout", a.backends.router.Get(), "upscale_enabled", cfg.Upscale.Enabled}
	if opts.Admin != nil {
		attrs = append(attrs, "admin_addr", opts.Admin.Addr().String())
	}
	a.log.Info("listening", attrs...)
	if opts.Banner != nil {
		printBanner(opts.Banner, ln.Addr().String(), cfg)
	}
}

// drain refuses new work, waits DRAIN_DELAY, then shuts hs down within
// SHUTDOWN_TIMEOUT; serveErr is hs.Serve's result.
func (a *App) drain(hs *http.Server, serveErr <-chan error) error {
	cfg := a.cfg
	a.api.Drain()
	if ctrl := a.backends.admission; ctrl != nil {
		ctrl.Drain()
	}
	a.log.Info("draining", "drain_delay", cfg.DrainDelay.String(), "shutdown_timeout", cfg.ShutdownTimeout.String())
	if cfg.DrainDelay > 0 {
		time.Sleep(cfg.DrainDelay)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		// Requests still running past the deadline are cut off.
		_ = hs.Close()
		return fmt.Errorf("shutdown: requests still running after %s: %w", cfg.ShutdownTimeout, err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	a.log.Info("stopped")
	return nil
}

// background runs parts that live as long as Serve; stop cancels them
// and waits for every one to return.
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    *slog.Logger
}

func newBackground(parent context.Context, log *slog.Logger) *background {
	ctx, cancel := context.WithCancel(parent)
	return &background{ctx: ctx, cancel: cancel, log: log}
}

// run starts f on its own goroutine; an error it returns is logged.
func (b *background) run(name string, f func(context.Context) error) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if err := f(b.ctx); err != nil {
			b.log.Error("background part stopped", "part", name, "error", err)
		}
	}()
}

func (b *background) stop() {
	b.cancel()
	b.wg.Wait()
}

// drainSignals calls f for each value on sig until ctx is done.
func drainSignals(ctx context.Context, sig <-chan os.Signal, f func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			f()
		}
	}
}

// seedDemo writes the bundled sample photo unless something is already
// stored under its key.
func seedDemo(ctx context.Context, store storage.Store) error {
	_, err := store.Get(ctx, sample.Key, 64<<20)
	if err == nil {
		return nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	return store.Put(ctx, sample.Key, sample.JPEG(), storage.PutOptions{ContentType: "image/jpeg"})
}

func printBanner(w io.Writer, addr string, cfg config.Config) {
	fmt.Fprintf(w, "\nvstage is listening on http://%s (mode %s, storage %s)\n", addr, cfg.Mode, redactURL(cfg.StorageURL))
	if cfg.Mode == mode.Self {
		fmt.Fprintf(w, "The engine is loading; /readyz answers 200 once it is warm:\n\n")
		fmt.Fprintf(w, "  curl -sS http://%s/readyz\n\n", addr)
	}
	fmt.Fprintf(w, "Stage the bundled sample photo:\n\n")
	fmt.Fprintf(w, "  curl -sS -X POST http://%s/infer -H 'Content-Type: application/json' \\\n", addr)
	fmt.Fprintf(w, "    -d '{\"image_id\":\"demo-1\",\"original_key\":\"%s\",\"room_type\":\"living_room\",\"style\":\"scandinavian\"}'\n\n", sample.Key)
	if local, ok := localDir(cfg.StorageURL); ok {
		fmt.Fprintf(w, "The staged image is written to %s/demo/staged/demo-1.jpg\n", local)
	}
	fmt.Fprintf(w, "Send it again for an idempotent replay; change image_id for a new job.\n\n")
}
