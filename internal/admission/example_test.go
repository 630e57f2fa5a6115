package admission_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/fault"
)

// A job holds its ticket while the backend runs and reports what it cost;
// a job that finds every slot busy is told when to come back.
func Example() {
	c, err := admission.New(admission.Options{
		Concurrency:          1,
		QueueDepth:           0,
		DurationPerMegapixel: 8 * time.Second,
		Registerer:           prometheus.NewRegistry(),
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	t, err := c.Acquire(ctx, admission.Request{Tier: admission.TierPro, Megapixels: 1.05})
	if err != nil {
		panic(err)
	}

	_, err = c.Acquire(ctx, admission.Request{Megapixels: 1.05})
	var rej *admission.Rejection
	if errors.As(err, &rej) {
		fe := fault.From(err)
		fmt.Println(fe.Code, rej.Reason, fe.RetryAfter.Round(time.Second))
	}

	// After the backend: the output's size, its time and its peak memory.
	t.Release(admission.Report{Duration: 7 * time.Second, Megapixels: 1.05, PeakGPUBytes: 11 << 30})
	// Output: overloaded queue_full 8s
}
