package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vstage/vstage/client"
	"github.com/vstage/vstage/worker/internal/config"
	"github.com/vstage/vstage/worker/internal/job"
	"github.com/vstage/vstage/worker/internal/queue"
	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/tracing"
)

// flushTraces exports the spans still buffered, within a few seconds.
func flushTraces(tp *tracing.Provider, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		log.Warn("traces lost at exit", "error", err)
	}
}

// run serves jobs until ctx ends, then shuts down: no new jobs start,
// running ones get WORKER_SHUTDOWN_TIMEOUT to finish, and asynq puts the
// rest back in their queues.
func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	conn, err := asynq.ParseRedisURI(cfg.RedisURL)
	if err != nil {
		return errors.New("REDIS_URL is not a redis://, rediss:// or redis-socket:// URL")
	}
	db, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.CheckSchema(ctx); err != nil {
		return err
	}
	tp, err := tracing.New(ctx, cfg.TracesExporter)
	if err != nil {
		return err
	}
	defer flushTraces(tp, log)
	vs, err := client.New(cfg.VstageURL, client.WithMaxAttempts(cfg.MaxAttempts), client.WithAttemptTimeout(cfg.AttemptTimeout),
		client.WithBreaker(cfg.BreakerFails, cfg.BreakerOpen), client.WithUserAgent("vstage-worker"),
		client.WithTracerProvider(tp), client.WithPropagator(tracing.Propagator))
	if err != nil {
		return err
	}
	q := newQueue(cfg, conn)
	defer q.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		queue.NewCollector(q, config.Tiers))
	handler := job.NewHandler(vs, db, job.NewMetrics(reg), log, cfg.JobDeadline, cfg.BreakerOpen, tp)

	srv := asynq.NewServer(conn, asynq.Config{
		Concurrency:     cfg.Concurrency,
		Queues:          cfg.Weights,
		StrictPriority:  cfg.StrictPriority,
		RetryDelayFunc:  job.RetryDelay(cfg.RetryMin, cfg.RetryMax),
		IsFailure:       job.IsFailure,
		ShutdownTimeout: cfg.ShutdownTime,
		Logger:          asynqLogger{log.With("component", "asynq")},
		LogLevel:        asynqLevel(cfg.LogLevel),
		HealthCheckFunc: func(err error) {
			if err != nil {
				log.Warn("redis health check failed", "error", err)
			}
		},
	})
	mux := asynq.NewServeMux()
	mux.Handle(queue.TaskType, handler)

	var metrics *http.Server
	var ln net.Listener
	if cfg.MetricsAddr != "" {
		var lc net.ListenConfig
		if ln, err = lc.Listen(ctx, "tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		metrics = &http.Server{Handler: adminRoutes(reg, db, q), ReadHeaderTimeout: 10 * time.Second}
	}
	if err := srv.Start(mux); err != nil {
		if ln != nil {
			_ = ln.Close()
		}
		return fmt.Errorf("starting the queue server: %w", err)
	}
	log.Info("worker started", "vstage_url", cfg.VstageURL, "concurrency", cfg.Concurrency, "weights", cfg.Weights,
		"strict_priority", cfg.StrictPriority, "metrics_addr", cfg.MetricsAddr)
	served := make(chan error, 1)
	if metrics != nil {
		go func() { served <- metrics.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("metrics listener: %w", err)
	}
	log.Info("worker stopping", "shutdown_timeout", cfg.ShutdownTime)
	srv.Shutdown()
	if metrics != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = metrics.Shutdown(sctx)
		if serr := <-served; err == nil && !errors.Is(serr, http.ErrServerClosed) {
			err = serr
		}
	}
	log.Info("worker stopped")
	return err
}

// adminRoutes serves /metrics, /healthz (the process answers) and /readyz
// (Redis and PostgreSQL answer).
func adminRoutes(reg *prometheus.Registry, db *store.Store, q *queue.Queue) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := db.Ping(ctx); err != nil {
			http.Error(w, "postgresql: not answering", http.StatusServiceUnavailable)
			return
		}
		if _, err := q.Info(config.Tiers[0]); err != nil {
			http.Error(w, "redis: not answering", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// asynqLogger writes asynq's own log lines through slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }

// Fatal is part of asynq's Logger interface; asynq itself never calls it,
// and the worker does not exit from a library's goroutine.
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)) }

func asynqLevel(l slog.Level) asynq.LogLevel {
	switch {
	case l <= slog.LevelDebug:
		return asynq.DebugLevel
	case l <= slog.LevelInfo:
		return asynq.InfoLevel
	case l <= slog.LevelWarn:
		return asynq.WarnLevel
	}
	return asynq.ErrorLevel
}
