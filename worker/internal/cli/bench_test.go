package cli_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkJobsThroughMock measures the worker's own cost per job: b.N jobs
// queued first, then run by one worker (WORKER_CONCURRENCY 4) against a
// mock-mode sidecar, from the worker's start to the last row staged.
func BenchmarkJobsThroughMock(b *testing.B) {
	s := newStack(b, nil)
	side := s.mockSidecar(b)
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i)
		s.enqueue(b, ids[i], "pro", "bedroom", "enqueued")
	}
	// One count per poll, so that watching costs the database little.
	conn, err := pgx.Connect(b.Context(), s.env["DATABASE_URL"])
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(b.Context()))
	b.ResetTimer()
	begin := time.Now()
	stop := s.runWorker(b, map[string]string{"VSTAGE_URL": side.URL, "WORKER_CONCURRENCY": "4"})
	for n := 0; n < b.N; time.Sleep(20 * time.Millisecond) {
		if err := conn.QueryRow(b.Context(), `SELECT count(*) FROM images WHERE status = 'staged'`).Scan(&n); err != nil {
			b.Fatal(err)
		}
		if time.Since(begin) > 10*time.Minute {
			b.Fatalf("%d of %d staged after 10 minutes", n, b.N)
		}
	}
	took := time.Since(begin)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(b.N)/took.Seconds(), "jobs/s")
}
