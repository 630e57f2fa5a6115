// Package backoff holds the retry timing shared by vstage's HTTP callers:
// the worker client and the managed-provider backend. It is public so that
// the client, which other modules import, can use it without reaching into
// internal packages.
package backoff

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Delay returns the wait before retry number attempt (1 for the first
// retry): base doubled per attempt and capped at maxWait, with the lower
// half fixed and the upper half random, so that callers that failed
// together do not come back together.
func Delay(attempt int, base, maxWait time.Duration) time.Duration {
	d := maxWait
	if attempt >= 1 {
		// A shift past the width overflows to zero or below: the cap.
		if s := base << (attempt - 1); s > 0 && s < maxWait {
			d = s
		}
	}
	return d/2 + rand.N(d/2+1)
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
