package managed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/vstage/vstage/client/backoff"
)

// callError is one failed exchange with the provider, after retries. Stage
// turns it into a fault; it never reaches a client as is.
type callError struct {
	op     string
	status int // 0 when no answer came back
	// timeout is set when the per-call timeout expired, not the caller's
	// deadline.
	timeout    bool
	tooLarge   bool
	retryAfter time.Duration
	detail     string // the provider's answer, sanitized
	err        error
}

func (e *callError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "provider %s", e.op)
	switch {
	case e.tooLarge:
		b.WriteString(": answer too large")
	case e.timeout:
		b.WriteString(": timed out")
	case e.status != 0:
		fmt.Fprintf(&b, ": HTTP %d", e.status)
	}
	if e.detail != "" {
		fmt.Fprintf(&b, ": %s", e.detail)
	}
	if e.err != nil {
		fmt.Fprintf(&b, ": %v", e.err)
	}
	return b.String()
}

func (e *callError) Unwrap() error { return e.err }

// retryable reports whether the same call may succeed later: no answer at
// all, a timeout, 429 or a 5xx. Any other 4xx means the request itself is
// wrong and will stay wrong.
func (e *callError) retryable() bool {
	if e.tooLarge {
		return false
	}
	return e.timeout || e.status == 0 || e.status == http.StatusTooManyRequests || e.status >= 500
}

// call is one HTTP exchange to make, possibly several times.
type call struct {
	op      string
	method  string
	url     string
	body    []byte
	header  http.Header
	auth    bool
	limit   int64
	timeout time.Duration
}

// do makes c, retrying with exponential backoff and jitter while the
// failure is retryable, attempts remain and the wait fits in ctx's deadline.
// A Retry-After from the provider is a floor on the wait. Errors are a
// *callError, or ctx's error once ctx is done.
func (b *Backend) do(ctx context.Context, c call) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		body, err := b.once(ctx, c)
		if err == nil {
			return body, nil
		}
		var ce *callError
		if !errors.As(err, &ce) || !ce.retryable() || attempt >= b.opts.MaxAttempts {
			return nil, err
		}
		wait := max(backoff.Delay(attempt, b.opts.BackoffBase, b.opts.BackoffMax), ce.retryAfter)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			// Sleeping past the deadline only to fail is worse than
			// failing now with the provider's own answer.
			return nil, err
		}
		b.log.Debug("provider call failed; retrying", slog.String("op", c.op), slog.Int("attempt", attempt),
			slog.Int("status", ce.status), slog.Duration("wait", wait))
		if err := backoff.Sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func (b *Backend) once(ctx context.Context, c call) ([]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, c.method, c.url, bytes.NewReader(c.body))
	if err != nil {
		return nil, &callError{op: c.op, err: err}
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if c.auth {
		req.Header.Set("Authorization", "Bearer "+string(b.opts.Token))
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, b.transportError(ctx, cctx, c.op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.limit+1))
	if err != nil {
		return nil, b.transportError(ctx, cctx, c.op, err)
	}
	if int64(len(data)) > c.limit {
		return nil, &callError{op: c.op, status: resp.StatusCode, tooLarge: true}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, &callError{op: c.op, status: resp.StatusCode,
			retryAfter: backoff.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
			detail:     b.sanitize(string(data))}
	}
	return data, nil
}

// transportError classifies a failure with no complete answer. The
// caller's own cancellation or deadline wins over everything else, so that
// it is never retried nor blamed on the provider.
func (b *Backend) transportError(ctx, cctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// url.Error repeats the URL; the cause alone is enough.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	timeout := cctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout())
	return &callError{op: op, timeout: timeout, err: errors.New(b.sanitize(err.Error()))}
}

// maxDetail is the longest provider text kept in an error.
const maxDetail = 200

// sanitize makes provider text fit for logs and client messages: one line,
// printable, short, and without the token even if the provider echoed it.
func (b *Backend) sanitize(s string) string {
	if b.opts.Token != "" {
		s = strings.ReplaceAll(s, string(b.opts.Token), redacted)
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > maxDetail {
		s = string(r[:maxDetail]) + "…"
	}
	return s
}
