package job

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/vstage/vstage/client"
)

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	cases := []struct {
		err       error
		code      string
		retryable bool
		after     time.Duration
	}{
		{&client.Error{StatusCode: 400, Code: client.CodeInvalidInput, Message: "bad room"}, client.CodeInvalidInput, false, 0},
		{&client.Error{StatusCode: 429, Code: client.CodeOverloaded, Retryable: true, RetryAfter: 3 * time.Second}, client.CodeOverloaded, true, 3 * time.Second},
		{fmt.Errorf("wrapped: %w", &client.Error{StatusCode: 502, Retryable: true}), "http_502", true, 0},
		{fmt.Errorf("%w (open)", client.ErrCircuitOpen), CodeCircuitOpen, true, 0},
		{fmt.Errorf("vstage: %w", context.DeadlineExceeded), CodeDeadline, true, 0},
		{fmt.Errorf("vstage: %w", refused), CodeTransport, true, 0},
	}
	for _, c := range cases {
		code, _, retryable, after := classify(c.err)
		if code != c.code || retryable != c.retryable || after != c.after {
			t.Errorf("%v: %s %v %v, want %s %v %v", c.err, code, retryable, after, c.code, c.retryable, c.after)
		}
	}
}

func TestRetryDelayHonoursRetryAfter(t *testing.T) {
	delay := RetryDelay(time.Second, time.Minute)
	plain := errors.New("reset")
	for n := range 12 {
		d := delay(n, plain, nil)
		ceiling := min(time.Second<<n, time.Minute)
		if d < ceiling/2 || d > ceiling {
			t.Errorf("retry %d: %v, want within [%v, %v]", n, d, ceiling/2, ceiling)
		}
	}
	late := &retryError{err: plain, after: 45 * time.Second}
	if d := delay(0, late, nil); d < 45*time.Second {
		t.Errorf("a failure with Retry-After 45s retried after %v", d)
	}
	if d := delay(0, &retryError{err: plain, after: 7 * time.Second, delay: true}, nil); d != 7*time.Second {
		t.Errorf("a delayed attempt waits %v, want its Retry-After", d)
	}
	if d := delay(0, &retryError{err: plain, delay: true}, nil); d != time.Second {
		t.Errorf("a delayed attempt without Retry-After waits %v, want WORKER_RETRY_MIN", d)
	}
}

func TestOnlyFailuresUseRetries(t *testing.T) {
	if IsFailure(&retryError{err: errors.New("x"), delay: true}) {
		t.Error("a delayed attempt counted as a failure")
	}
	if !IsFailure(&retryError{err: errors.New("x")}) || !IsFailure(errors.New("db down")) {
		t.Error("a failure did not count")
	}
	for _, code := range []string{client.CodeOverloaded, client.CodeInProgress, CodeCircuitOpen} {
		if !delays(code) {
			t.Errorf("%s uses a retry", code)
		}
	}
	for _, code := range []string{client.CodeUnavailable, client.CodeTimeout, client.CodeOOM, CodeTransport} {
		if delays(code) {
			t.Errorf("%s does not use a retry", code)
		}
	}
}

func TestMetricCodesAreBounded(t *testing.T) {
	for code, want := range map[string]string{
		client.CodeInvalidInput: client.CodeInvalidInput, CodeTransport: CodeTransport,
		"http_502": "other", "made_up_by_a_proxy": "other", "": "other",
	} {
		if got := metricCode(code); got != want {
			t.Errorf("metricCode(%q) = %q, want %q", code, got, want)
		}
	}
	if got := clip("ab\u00e9cd", 3); got != "ab" {
		t.Errorf("clip cut a character in half: %q", got)
	}
}

func TestMetricsFollowNamingRules(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.queueWait.WithLabelValues("free").Observe(1)
	m.attempts.WithLabelValues("free", OutcomeStaged, "").Inc()
	m.duration.WithLabelValues("free", OutcomeStaged).Observe(1)
	m.inFlight.Set(1)
	families, err := reg.Gather()
	if err != nil || len(families) != 4 {
		t.Fatalf("%d families, %v", len(families), err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %+v", err, problems)
	}
}
