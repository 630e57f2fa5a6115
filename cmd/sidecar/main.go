// Command sidecar is vstage's HTTP service: it validates staging requests,
// reads and writes images in storage, and runs the configured backend. All
// settings come from environment variables; see the README.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/vstage/vstage/internal/app"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/telemetry"
)

// traceFlushTimeout bounds the export of the last spans at exit.
const traceFlushTimeout = 5 * time.Second

// defaultGCPercent is the collector's target (GOGC) unless the environment
// sets one. The sidecar's live heap is a few megabytes, but each job
// allocates a few hundred kilobytes (the original, the result, the
// disclosed copy), so at Go's default of 100 a collection ran every eight
// or so jobs, and the jobs it overlapped made the slowest percent. At 400
// it runs a quarter as often; the heap may grow to five times its live
// size, which GOMEMLIMIT caps where a deployment needs a bound.
const defaultGCPercent = 400

// setGCPercent applies defaultGCPercent unless GOGC is set, and returns
// the target in force (-1: collection off).
func setGCPercent(getenv func(string) string) int {
	if getenv("GOGC") != "" {
		v := debug.SetGCPercent(100)
		debug.SetGCPercent(v)
		return v
	}
	debug.SetGCPercent(defaultGCPercent)
	return defaultGCPercent
}

func main() { os.Exit(run()) }

func run() int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		return 2
	}
	cfg, err := config.Load(os.Getenv, wd)
	if err != nil {
		// One line per problem, each naming its variable.
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(os.Stderr, "sidecar: invalid configuration: %s\n", line)
		}
		return 2
	}
	log := telemetry.NewLogger(os.Stderr, cfg.LogLevel)
	log.Info("garbage collector", "gogc", setGCPercent(os.Getenv))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var banner io.Writer
	if cfg.SeedDemo {
		banner = os.Stdout
	}
	tr, err := telemetry.NewTracing(ctx, cfg.Tracing.Exporter)
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	// The exporter reports its failures (a collector that is down) through
	// OpenTelemetry's process-wide handler; they belong in our log.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing", "error", err) }))
	defer func() {
		// Spans still buffered are sent before the process ends.
		sctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
		defer cancel()
		if err := tr.Shutdown(sctx); err != nil {
			log.Warn("traces lost at exit", "error", err)
		}
	}()
	a, err := app.New(ctx, cfg, log, tr)
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.ListenAddr)
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	opts := app.ServeOptions{Banner: banner}
	if cfg.Rollout.AdminAddr != "" {
		if opts.Admin, err = lc.Listen(ctx, "tcp", cfg.Rollout.AdminAddr); err != nil {
			log.Error("start failed", "error", err)
			return 1
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	opts.Reload = hup
	if err := a.Serve(ctx, ln, opts); err != nil {
		log.Error("sidecar stopped", "error", err)
		return 1
	}
	return 0
}
