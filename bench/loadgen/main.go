// Command loadgen sends staging jobs to a running sidecar from a fixed
// number of concurrent clients and reports throughput and latency
// percentiles. Each job gets a fresh image_id unless -replay is set, so by
// default every request does real work.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vstage/vstage/bench/internal/benchhttp"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/infer", "the /infer URL")
	key := flag.String("key", "demo/empty_living_room.jpg", "original_key of every job")
	clients := flag.Int("c", 4, "concurrent clients")
	total := flag.Int("n", 400, "jobs in all")
	replay := flag.Bool("replay", false, "reuse one image_id, measuring idempotent replays")
	timeout := flag.Duration("timeout", 2*time.Minute, "whole run deadline")
	flag.Parse()
	if err := run(*url, *key, *clients, *total, *replay, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(url, key string, clients, total int, replay bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	run := time.Now().UnixNano()
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	statuses := map[int]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > int64(total) {
					return
				}
				id := fmt.Sprintf("load-%d-%d", run, i)
				if replay {
					id = fmt.Sprintf("load-%d-replay", run)
				}
				body := fmt.Sprintf(`{"image_id":%q,"original_key":%q,"room_type":"living_room","style":"modern","seed":1}`, id, key)
				t0 := time.Now()
				status, err := benchhttp.Post(ctx, client, url, []byte(body))
				if err != nil {
					status = -1
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				statuses[status]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(lat) == 0 {
		return fmt.Errorf("no request finished")
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return benchhttp.Quantile(lat, q) }
	fmt.Printf("requests %d, clients %d, elapsed %.2fs, %.1f req/s\n", len(lat), clients, elapsed.Seconds(), float64(len(lat))/elapsed.Seconds())
	fmt.Printf("latency p50 %.1fms  p90 %.1fms  p99 %.1fms  max %.1fms\n", ms(pct(.50)), ms(pct(.90)), ms(pct(.99)), ms(lat[len(lat)-1]))
	fmt.Printf("statuses %v\n", statuses)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
