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
	"github.com/vstage/vstage/internal/rollout"
	"github.com/vstage/vstage/internal/sample"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/storage"
	"github.com/vstage/vstage/internal/telemetry"
)

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
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*App, error) {
	if cfg.Rollout.AdminAddr != "" {
		if err := rollout.CheckAdminAddr(cfg.Rollout.AdminAddr, cfg.Rollout.AdminToken); err != nil {
			return nil, err
		}
	}
	store, err := storage.Open(ctx, cfg.StorageURL, storage.Options{
		S3Endpoint: cfg.S3Endpoint, S3ForcePathStyle: cfg.S3ForcePathStyle,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	a, err := build(ctx, cfg, log, store)
	if err != nil {
		_ = store.Close()
		return nil, err
	}
	return a, nil
}

func build(ctx context.Context, cfg config.Config, log *slog.Logger, store storage.Store) (*App, error) {
	if cfg.SeedDemo {
		if err := seedDemo(ctx, store); err != nil {
			return nil, fmt.Errorf("seed the demo photo: %w", err)
		}
	}
	reg := telemetry.NewRegistry()
	cat := catalog.Default()
	bs, err := buildBackends(cfg, log, reg)
	if err != nil {
		return nil, err
	}
	svc := staging.New(store, bs.staging, cat, staging.Options{
		AllowedPrefixes:    cfg.AllowedPrefixes,
		StagedKey:          cfg.StagedKey,
		StagedCacheControl: cfg.StagedCacheControl,
		MaxInputBytes:      cfg.MaxInputBytes,
		MaxInputPixels:     cfg.MaxInputPixels,
		OutputLongSide:     cfg.OutputLongSide,
	}, telemetry.NewStagingMetrics(reg), log)
	srv := api.New(svc, cat, reg, telemetry.NewHTTPMetrics(reg), log, api.Options{
		MaxBodyBytes:   cfg.MaxBodyBytes,
		RequestTimeout: cfg.RequestTimeout,
		Mode:           string(cfg.Mode),
		Ready:          bs.ready,
		Engine:         bs.engineInfo,
	})
	a := &App{cfg: cfg, log: log, store: store, api: srv, handler: srv.Handler(), backends: bs}
	if cfg.Rollout.AdminAddr != "" {
		a.admin = rollout.NewAdminHandler(bs.router, cfg.Rollout.AdminToken, log.With("component", "admin"))
	}
	return a, nil
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
	cfg, log := a.cfg, a.log
	defer func() {
		if err := a.store.Close(); err != nil {
			log.Warn("closing storage", "error", err)
		}
	}()
	if a.admin != nil && opts.Admin == nil {
		_ = ln.Close()
		return errors.New("serve: the admin API is configured but has no listener")
	}
	hs := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A job may use its whole deadline before the answer is written.
		WriteTimeout: cfg.RequestTimeout + 10*time.Second,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	// The background parts live until the drain is over, not until ctx
	// ends, so they get a context of their own.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	defer func() {
		stopBackground()
		bg.Wait()
	}()
	goBackground := func(name string, run func(context.Context) error) {
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := run(bgCtx); err != nil {
				log.Error("background part stopped", "part", name, "error", err)
			}
		}()
	}
	if b := a.backends; b.engine != nil {
		goBackground("engine", b.engine.Run)
		goBackground("gpu", b.gpu.Run)
	}
	if opts.Reload != nil {
		goBackground("rollout reload", func(ctx context.Context) error {
			if cfg.Rollout.File == "" {
				drainSignals(ctx, opts.Reload, func() { log.Warn("SIGHUP ignored: no ROLLOUT_FILE is configured") })
				return nil
			}
			a.backends.router.ReloadOn(ctx, opts.Reload, cfg.Rollout.File)
			return nil
		})
	}
	var admin *http.Server
	if a.admin != nil {
		admin = &http.Server{Handler: a.admin, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
		goBackground("admin", func(context.Context) error {
			if err := admin.Serve(opts.Admin); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		defer func() { _ = admin.Close() }()
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	attrs := []any{"addr", ln.Addr().String(), "mode", cfg.Mode, "storage", redactURL(cfg.StorageURL),
		"rollout", a.backends.router.Get(), "upscale_enabled", cfg.Rollout.UpscaleEnabled}
	if opts.Admin != nil {
		attrs = append(attrs, "admin_addr", opts.Admin.Addr().String())
	}
	log.Info("listening", attrs...)
	if opts.Banner != nil {
		printBanner(opts.Banner, ln.Addr().String(), cfg)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.api.Drain()
	if ctrl := a.backends.admission; ctrl != nil {
		ctrl.Drain()
	}
	log.Info("draining", "drain_delay", cfg.DrainDelay.String(), "shutdown_timeout", cfg.ShutdownTimeout.String())
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
	log.Info("stopped")
	return nil
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
	if cfg.Mode == config.ModeSelf {
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
