package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Options configures a Supervisor. The zero value of every field means the
// default written next to it; the environment variable named in brackets is
// the setting the sidecar's configuration maps onto the field.
type Options struct {
	// Python is the interpreter that runs the engine [ENGINE_PYTHON].
	// Empty means python3 from PATH.
	Python string
	// Module is the Python module run as the engine, "python -m Module"
	// [ENGINE_MODULE]. Empty means "inference"; tests run "enginetest", the
	// same server with a fault-injecting backend.
	Module string
	// Args are extra engine flags appended after the ones the supervisor
	// sets, such as "--concurrency", "2".
	Args []string
	// ModelDir is passed as --model-dir when not empty [MODEL_DIR].
	ModelDir string
	// TinyModel passes --tiny-model: the engine builds its tiny model with
	// random weights, for tests and demos [ENGINE_TINY_MODEL]. The engine
	// refuses to start with neither a ModelDir nor TinyModel, or with both.
	TinyModel bool
	// Device is passed as --device when not empty [ENGINE_DEVICE]: auto,
	// cpu or cuda.
	Device string
	// WarmupLongSide, when not zero, is passed as --warmup-long-side: the
	// long side of the output the jobs will ask for [OUTPUT_LONG_SIDE], so
	// the warm-up job renders at that size. The engine clamps it to its
	// limits.
	WarmupLongSide int
	// Env holds extra KEY=VALUE entries for the engine's environment. They
	// are added after the sidecar's own environment has been scrubbed of
	// credentials, and are not scrubbed themselves.
	Env []string
	// SocketDir is where the private socket directory is created; empty
	// means os.TempDir(). A Unix socket path must stay under 100 bytes.
	SocketDir string
	// TracerProvider and Propagator trace the Stage calls (a gRPC client
	// span each) and carry the trace context to the engine in the call's
	// metadata; nil traces nothing and sends no context.
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator

	// StartTimeout bounds the time from spawn to SERVING, model load and
	// warm-up included [ENGINE_START_TIMEOUT]. Default 10m.
	StartTimeout time.Duration
	// HealthInterval is the period of health checks. Default 1s.
	HealthInterval time.Duration
	// HealthTimeout is how long health checks may fail (or not answer)
	// before the engine is restarted [ENGINE_HEALTH_TIMEOUT]. Default 10s.
	HealthTimeout time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL when the engine is
	// stopped [ENGINE_STOP_GRACE]. Default 10s.
	StopGrace time.Duration
	// WedgeGrace is how long the engine may take to answer Cancel for a job
	// that ended on the sidecar's side (its deadline passed or its caller
	// left), while no other job makes progress, before it is declared
	// wedged and restarted [ENGINE_WEDGE_GRACE]. Default 10s.
	WedgeGrace time.Duration
	// MaxRSS is the engine's resident memory above which it is restarted
	// between jobs [ENGINE_MAX_RSS], in bytes. Zero disables the check.
	MaxRSS uint64
	// MaxJobs restarts the engine after that many jobs [ENGINE_MAX_JOBS].
	// Zero disables it.
	MaxJobs int
	// BackoffMin and BackoffMax bound the wait between restart attempts,
	// which doubles with each consecutive failure, with jitter
	// [ENGINE_BACKOFF_MIN, ENGINE_BACKOFF_MAX]. Defaults 500ms and 30s.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// Slots caps the jobs in flight: Stage waits (until its context ends)
	// for one of them to end before it sends another. A job holds its slot
	// until the engine says it has ended (its stream's status, or its
	// answer to Cancel) or is given up, so a cancelled job the engine is
	// still stopping keeps its slot. Zero means no limit; set it to the
	// sidecar's admission slots per engine.
	Slots int
	// StderrLines is the number of engine log lines buffered on their way
	// to Logger; more are dropped and counted. Default 1024.
	StderrLines int

	// Logger receives the supervisor's logs and the engine's stderr lines;
	// nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

// propagator is the Propagator, or the W3C trace context when none is set.
func (o Options) propagator() propagation.TextMapPropagator {
	if o.Propagator != nil {
		return o.Propagator
	}
	return propagation.TraceContext{}
}

func (o Options) withDefaults() (Options, error) {
	if o.Python == "" {
		o.Python = "python3"
	}
	if o.Module == "" {
		o.Module = "inference"
	}
	if o.SocketDir == "" {
		o.SocketDir = os.TempDir()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.StartTimeout, 10*time.Minute)
	def(&o.HealthInterval, time.Second)
	def(&o.HealthTimeout, 10*time.Second)
	def(&o.StopGrace, 10*time.Second)
	def(&o.WedgeGrace, 10*time.Second)
	def(&o.BackoffMin, 500*time.Millisecond)
	def(&o.BackoffMax, 30*time.Second)
	if o.StderrLines == 0 {
		o.StderrLines = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	for name, d := range map[string]time.Duration{
		"StartTimeout": o.StartTimeout, "HealthInterval": o.HealthInterval,
		"HealthTimeout": o.HealthTimeout, "StopGrace": o.StopGrace,
		"WedgeGrace": o.WedgeGrace, "BackoffMin": o.BackoffMin, "BackoffMax": o.BackoffMax,
	} {
		if d < 0 {
			return o, fmt.Errorf("engine: %s must not be negative, got %v", name, d)
		}
	}
	switch {
	case o.BackoffMax < o.BackoffMin:
		return o, fmt.Errorf("engine: BackoffMax (%v) is below BackoffMin (%v)", o.BackoffMax, o.BackoffMin)
	case o.MaxJobs < 0:
		return o, errors.New("engine: MaxJobs must not be negative")
	case o.Slots < 0:
		return o, errors.New("engine: Slots must not be negative")
	case o.StderrLines < 0:
		return o, errors.New("engine: StderrLines must not be negative")
	case o.WarmupLongSide < 0:
		return o, errors.New("engine: WarmupLongSide must not be negative")
	}
	// A socket path of 108 bytes is the kernel's limit; the engine wants
	// under 100, and the private directory adds a random name.
	if n := len(filepath.Join(o.SocketDir, "vstage-engine-0123456789", socketName)); n >= 100 {
		return o, fmt.Errorf("engine: SocketDir %q is too long for a Unix socket path (%d bytes)", o.SocketDir, n)
	}
	return o, nil
}

const socketName = "engine.sock"

// credentialMarkers are name fragments of variables that hold secrets.
// The engine needs none: it opens no network connection and reads no
// storage.
var credentialMarkers = []string{"_TOKEN", "SECRET", "PASSWORD", "PASSWD", "_KEY", "CREDENTIAL"}

// scrubEnv returns env without the variables whose names look like
// credentials.
func scrubEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if name, _, _ := strings.Cut(kv, "="); !isCredential(name) {
			out = append(out, kv)
		}
	}
	return out
}

func isCredential(name string) bool {
	upper := strings.ToUpper(name)
	// OTLP exporter headers often carry a backend's API key; the engine's
	// exporter is meant for a collector beside it, which needs none.
	if strings.HasPrefix(upper, "OTEL_") && strings.HasSuffix(upper, "_HEADERS") {
		return true
	}
	if strings.HasPrefix(upper, "AWS_") || strings.HasPrefix(upper, "AZURE_") ||
		strings.HasPrefix(upper, "GOOGLE_APPLICATION_CREDENTIALS") {
		return true
	}
	for _, m := range credentialMarkers {
		if strings.Contains(upper, m) || strings.HasPrefix(upper, strings.TrimPrefix(m, "_")+"_") {
			return true
		}
	}
	return false
}
