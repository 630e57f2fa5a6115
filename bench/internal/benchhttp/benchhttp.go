// Package benchhttp holds what the benchmark commands share: posting a JSON
// body and reading latency quantiles.
package benchhttp

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"time"
)

// Post sends body as JSON to url and returns the answer's status once its
// body is read, or an error when no answer came.
func Post(ctx context.Context, c *http.Client, url string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// Quantile returns the q quantile (0 to 1) of sorted, which must not be
// empty; 1 is the largest.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}
