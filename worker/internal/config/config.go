// Package config reads the worker's settings from environment variables,
// once, at start. Settings lists every variable with its default; the
// README's table is checked against it.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Tiers are the job tiers, each an asynq queue of the same name, from the
// most to the least important.
var Tiers = []string{"business", "pro", "free"}

// Setting is one environment variable.
type Setting struct {
	Name, Default, Meaning string
}

// Settings lists every variable the worker reads.
var Settings = []Setting{
	{"REDIS_URL", "redis://127.0.0.1:6379/0", "Redis holding the queues: redis://[:password@]host:port[/db], rediss:// for TLS, or redis-socket://path."},
	{"DATABASE_URL", "postgres://vstage@127.0.0.1:5432/vstage?sslmode=disable", "PostgreSQL holding images and jobs (a libpq URL or key=value string)."},
	{"VSTAGE_URL", "http://127.0.0.1:8080", "Base URL of the vstage service."},
	{"WORKER_CONCURRENCY", "2", "Jobs this worker runs at once (calls to /infer in flight)."},
	{"WORKER_QUEUE_WEIGHTS", "business=6,pro=3,free=1", "Relative share of dequeues per tier queue (each at least 1)."},
	{"WORKER_STRICT_PRIORITY", "false", "true: always drain business before pro before free (free can starve)."},
	{"WORKER_QUEUE_CAPS", "business=5000,pro=5000,free=2000", "Tasks a tier queue may hold (pending, scheduled, retrying, running) before enqueue refuses."},
	{"WORKER_JOB_DEADLINE", "5m", "Bound of one attempt of a job, the client's own retries included (run applies it; enqueue also gives it to the task as asynq's own bound)."},
	{"WORKER_MAX_RETRY", "20", "Retries of a failed job before it is marked failed, set on the task at enqueue (overload, in_progress and an open circuit do not count)."},
	{"WORKER_RETRY_MIN", "2s", "First wait before retrying a failed job; doubles per failure, with jitter, never under the service's Retry-After."},
	{"WORKER_RETRY_MAX", "5m", "Longest wait before retrying a job."},
	{"WORKER_RETENTION", "24h", "How long Redis keeps a finished task, so its image_id still counts as a duplicate."},
	{"WORKER_SHUTDOWN_TIMEOUT", "60s", "On SIGTERM, how long running jobs may finish before they are cancelled and put back in their queue."},
	{"WORKER_METRICS_ADDR", "127.0.0.1:9092", "Listen address of GET /metrics and /healthz; off: none."},
	{"VSTAGE_MAX_ATTEMPTS", "3", "Tries of one /infer call inside a job attempt (retryable answers and transport errors)."},
	{"VSTAGE_ATTEMPT_TIMEOUT", "130s", "Bound of one /infer call; keep it above the service's REQUEST_TIMEOUT."},
	{"VSTAGE_BREAKER_FAILURES", "5", "Consecutive failed calls that open the client's circuit."},
	{"VSTAGE_BREAKER_OPEN", "30s", "How long the circuit stays open; jobs that meet it wait this long without using a retry."},
	{"LOG_LEVEL", "info", "debug, info, warn or error."},
	{"OTEL_TRACES_EXPORTER", "none", "none, otlp or console: where run and enqueue send their spans; the SDK reads the other OTEL_* variables (endpoint, protocol, sampler) itself."},
}

// Config is the worker's typed configuration.
type Config struct {
	RedisURL       string
	DatabaseURL    string
	VstageURL      string
	Concurrency    int
	Weights        map[string]int
	StrictPriority bool
	Caps           map[string]int
	JobDeadline    time.Duration
	MaxRetry       int
	RetryMin       time.Duration
	RetryMax       time.Duration
	Retention      time.Duration
	ShutdownTime   time.Duration
	MetricsAddr    string // empty: no listener
	MaxAttempts    int
	AttemptTimeout time.Duration
	BreakerFails   uint32
	BreakerOpen    time.Duration
	LogLevel       slog.Level
	// TracesExporter is OTEL_TRACES_EXPORTER: none, otlp or console.
	TracesExporter string
}

// Load reads every setting through getenv (os.Getenv in production) and
// reports all bad values at once, one per line.
func Load(getenv func(string) string) (Config, error) {
	p := parser{getenv: getenv}
	c := Config{
		RedisURL:       p.str("REDIS_URL"),
		DatabaseURL:    p.str("DATABASE_URL"),
		VstageURL:      p.httpURL("VSTAGE_URL"),
		Concurrency:    p.positive("WORKER_CONCURRENCY"),
		Weights:        p.perTier("WORKER_QUEUE_WEIGHTS"),
		StrictPriority: p.boolean("WORKER_STRICT_PRIORITY"),
		Caps:           p.perTier("WORKER_QUEUE_CAPS"),
		JobDeadline:    p.duration("WORKER_JOB_DEADLINE"),
		MaxRetry:       p.nonNegative("WORKER_MAX_RETRY"),
		RetryMin:       p.duration("WORKER_RETRY_MIN"),
		RetryMax:       p.duration("WORKER_RETRY_MAX"),
		Retention:      p.duration("WORKER_RETENTION"),
		ShutdownTime:   p.duration("WORKER_SHUTDOWN_TIMEOUT"),
		MetricsAddr:    p.str("WORKER_METRICS_ADDR"),
		MaxAttempts:    p.positive("VSTAGE_MAX_ATTEMPTS"),
		AttemptTimeout: p.duration("VSTAGE_ATTEMPT_TIMEOUT"),
		BreakerFails:   uint32(p.positive("VSTAGE_BREAKER_FAILURES")),
		BreakerOpen:    p.duration("VSTAGE_BREAKER_OPEN"),
		LogLevel:       p.level("LOG_LEVEL"),
		TracesExporter: strings.ToLower(p.str("OTEL_TRACES_EXPORTER")),
	}
	switch c.TracesExporter {
	case "none", "otlp", "console":
	default:
		p.fail("OTEL_TRACES_EXPORTER", "must be none, otlp or console")
	}
	if c.MetricsAddr == "off" {
		c.MetricsAddr = ""
	}
	if c.RetryMax < c.RetryMin {
		p.fail("WORKER_RETRY_MAX", "must be at least WORKER_RETRY_MIN")
	}
	return c, errors.Join(p.errs...)
}

// ParseTier returns tier when it names a tier; empty means free.
func ParseTier(tier string) (string, error) {
	if tier == "" {
		return "free", nil
	}
	for _, t := range Tiers {
		if t == tier {
			return t, nil
		}
	}
	return "", fmt.Errorf("tier %q: want one of %s", tier, strings.Join(Tiers, ", "))
}

type parser struct {
	getenv func(string) string
	errs   []error
}

func (p *parser) fail(name, msg string) { p.errs = append(p.errs, fmt.Errorf("%s: %s", name, msg)) }

func (p *parser) str(name string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	for _, s := range Settings {
		if s.Name == name {
			return s.Default
		}
	}
	panic("config: no setting " + name) // a programming error, caught by the tests
}

func (p *parser) httpURL(name string) string {
	v := p.str(name)
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.fail(name, fmt.Sprintf("%q is not an http(s) URL", v))
	}
	return v
}

func (p *parser) integer(name string, least int) int {
	v := p.str(name)
	n, err := strconv.Atoi(v)
	if err != nil || n < least {
		p.fail(name, fmt.Sprintf("%q is not an integer of at least %d", v, least))
	}
	return n
}

func (p *parser) positive(name string) int    { return p.integer(name, 1) }
func (p *parser) nonNegative(name string) int { return p.integer(name, 0) }

func (p *parser) boolean(name string) bool {
	v := p.str(name)
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, fmt.Sprintf("%q is not true or false", v))
	}
	return b
}

func (p *parser) duration(name string) time.Duration {
	v := p.str(name)
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		p.fail(name, fmt.Sprintf("%q is not a positive duration such as 30s", v))
	}
	return d
}

func (p *parser) level(name string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(p.str(name))); err != nil {
		p.fail(name, "want debug, info, warn or error")
	}
	return l
}

// perTier parses "business=6,pro=3,free=1": every tier once, each value at
// least 1.
func (p *parser) perTier(name string) map[string]int {
	out := map[string]int{}
	for _, item := range strings.Split(p.str(name), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(item), "=")
		n, err := strconv.Atoi(strings.TrimSpace(v))
		tier, terr := ParseTier(strings.TrimSpace(k))
		switch {
		case !ok || k == "" || terr != nil:
			p.fail(name, fmt.Sprintf("%q: want tier=number for the tiers %s", item, strings.Join(Tiers, ", ")))
			return nil
		case err != nil || n < 1:
			p.fail(name, fmt.Sprintf("%s: %q is not an integer of at least 1", tier, v))
			return nil
		case out[tier] != 0:
			p.fail(name, fmt.Sprintf("%s is given twice", tier))
			return nil
		}
		out[tier] = n
	}
	if len(out) != len(Tiers) {
		missing := []string{}
		for _, t := range Tiers {
			if out[t] == 0 {
				missing = append(missing, t)
			}
		}
		sort.Strings(missing)
		p.fail(name, "missing "+strings.Join(missing, ", "))
		return nil
	}
	return out
}
