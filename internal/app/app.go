// Package app wires the sidecar's parts together and runs them until the
// context ends: the store, the backend, the staging service, the HTTP API,
// and the graceful drain on shutdown.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/vstage/vstage/internal/api"
	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/engine"
	"github.com/vstage/vstage/internal/sample"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/storage"
	"github.com/vstage/vstage/internal/telemetry"
)

// App is the wired sidecar.
type App struct {
	cfg     config.Config
	log     *slog.Logger
	store   storage.Store
	api     *api.Server
	handler http.Handler
	// engine is the supervised engine of self mode; nil in mock mode.
	engine *engine.Supervisor
}

// New builds the sidecar's parts from cfg: it opens the store (and seeds
// the demo photo when cfg.SeedDemo is set), the backend, the staging service
// and the API.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*App, error) {
	store, err := storage.Open(ctx, cfg.StorageURL, storage.Options{
		S3Endpoint: cfg.S3Endpoint, S3ForcePathStyle: cfg.S3ForcePathStyle,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	if cfg.SeedDemo {
		if err := seedDemo(ctx, store); err != nil {
			_ = store.Close()
			return nil, fmt.Errorf("seed the demo photo: %w", err)
		}
	}
	reg := telemetry.NewRegistry()
	cat := catalog.Default()
	a := &App{cfg: cfg, log: log, store: store}
	var be backend.Backend = &backend.Mock{MaxPixels: cfg.MaxInputPixels, Quality: cfg.OutputJPEGQuality}
	var ready func(context.Context) error
	if cfg.Mode == config.ModeSelf {
		sup, err := engine.New(engine.Options{
			Python:        cfg.Engine.Python,
			ModelDir:      cfg.Engine.ModelDir,
			Device:        cfg.Engine.Device,
			StartTimeout:  cfg.Engine.StartTimeout,
			HealthTimeout: cfg.Engine.HealthTimeout,
			StopGrace:     cfg.Engine.StopGrace,
			WedgeGrace:    cfg.Engine.WedgeGrace,
			MaxRSS:        uint64(cfg.Engine.MaxRSS),
			MaxJobs:       cfg.Engine.MaxJobs,
			BackoffMin:    cfg.Engine.BackoffMin,
			BackoffMax:    cfg.Engine.BackoffMax,
			Logger:        log.With("component", "engine"),
			Registerer:    reg,
		})
		if err != nil {
			_ = store.Close()
			return nil, fmt.Errorf("engine: %w", err)
		}
		self, err := backend.NewSelf(sup, backend.SelfOptions{Steps: cfg.Engine.Steps, Quality: cfg.OutputJPEGQuality})
		if err != nil {
			_ = store.Close()
			return nil, fmt.Errorf("self backend: %w", err)
		}
		a.engine, be = sup, self
		// Readiness is the engine's live state, asked afresh every time.
		ready = func(context.Context) error { return sup.Ready() }
	}
	svc := staging.New(store, staging.NewSingle(be), cat, staging.Options{
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
		Ready:          ready,
	})
	a.api, a.handler = srv, srv.Handler()
	return a, nil
}

// Handler returns the HTTP routes.
func (a *App) Handler() http.Handler { return a.handler }

// Serve answers on ln until ctx is done, then drains: readiness turns off,
// new jobs get 503, and requests in flight get cfg.ShutdownTimeout to
// finish. In self mode it runs the engine's supervisor for as long and
// stops the engine after the drain, so jobs in flight keep their engine. It
// closes ln and the store, and returns nil after a clean drain.
// banner, when not nil, receives a human-readable hint with the address and
// a curl command.
func (a *App) Serve(ctx context.Context, ln net.Listener, banner io.Writer) error {
	cfg, log := a.cfg, a.log
	defer func() {
		if err := a.store.Close(); err != nil {
			log.Warn("closing storage", "error", err)
		}
	}()
	hs := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A job may use its whole deadline before the answer is written.
		WriteTimeout: cfg.RequestTimeout + 10*time.Second,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	engineDone := make(chan error, 1)
	engineCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopEngine()
		if err := <-engineDone; err != nil {
			log.Error("engine supervisor", "error", err)
		}
	}()
	if a.engine != nil {
		go func() { engineDone <- a.engine.Run(engineCtx) }()
	} else {
		engineDone <- nil
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "mode", cfg.Mode, "storage", redactURL(cfg.StorageURL))
	if banner != nil {
		printBanner(banner, ln.Addr().String(), cfg)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.api.Drain()
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
