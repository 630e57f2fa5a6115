package engine_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/engine"
)

// A sidecar runs the supervisor for its whole life and stages through the
// self backend. It cancels Run's context only after its own drain, since
// Run fails the jobs still in flight when it stops the engine.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	sup, err := engine.New(engine.Options{
		Python:        ".venv/bin/python",
		ModelDir:      os.Getenv("MODEL_DIR"),
		HealthTimeout: 10 * time.Second,
		Logger:        slog.Default(),
		Registerer:    prometheus.NewRegistry(),
	})
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()

	self, err := backend.NewSelf(sup, backend.SelfOptions{Steps: 30, Quality: 90})
	if err != nil {
		panic(err)
	}
	_ = self // handed to the staging service; sup.Ready backs /readyz

	<-done // after SIGTERM: the engine has been stopped and reaped
}
