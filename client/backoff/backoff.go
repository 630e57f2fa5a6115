// Package backoff holds vstage's retry timing: the worker client's retries,
// the managed-provider backend's retries and the engine supervisor's
// restarts all wait as Delay says. It lives in the client's module so that
// a program importing the client gets it without the service's
// dependencies.
package backoff

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Delay returns the wait before retry number attempt (1 for the first;
// below 1 counts as 1). Its ceiling is base doubled per attempt after the
// first, capped at maxWait; the wait is drawn from the ceiling's upper half,
// so that it still grows with every attempt while callers that failed
// together spread out. A base or maxWait of zero or less means no wait.
func Delay(attempt int, base, maxWait time.Duration) time.Duration {
	if base <= 0 || maxWait <= 0 {
		return 0
	}
	d := min(base, maxWait)
	for n := 1; n < attempt && d < maxWait; n++ {
		if d > maxWait/2 {
			d = maxWait // doubling would pass the cap, or overflow
		} else {
			d *= 2
		}
	}
	return d/2 + rand.N(d-d/2+1)
}

// Sleep waits d, or less when ctx ends first, in which case it returns
// ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ParseRetryAfter reads a Retry-After header value, in seconds or as an
// HTTP date, relative to now; zero when absent, negative, past or
// unreadable.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(s, 0)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
