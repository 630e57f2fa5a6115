// Command overhead measures what the sidecar adds to a job, and how fast it
// refuses work when the GPU is saturated.
//
//	overhead -mode job -url http://127.0.0.1:8080/infer -log sidecar.log -n 200
//
// sends n jobs one after another (fresh image_ids) and pairs each answer's
// latency with the engine's own time for the job and with the time of the
// engine call as the sidecar saw it, both from the sidecar's request line
// (engine_ms and backend_ms). The first
// difference is what serving through the sidecar adds (HTTP, validation,
// storage reads and writes, header checks, and the gRPC transfer and
// stream); the second is the sidecar's own work alone, and what is left
// between the two (call - engine) is the engine call's transport: the
// request and result on the socket and through the engine's gRPC server.
//
//	overhead -mode reject -url ... -n 2000 -c 8
//
// sends n jobs from c clients to a sidecar whose only place is taken and
// whose queue is off, and reports the latency of the 429 answers.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vstage/vstage/bench/internal/benchhttp"
)

func main() {
	mode := flag.String("mode", "job", "job or reject")
	url := flag.String("url", "http://127.0.0.1:8080/infer", "the /infer URL")
	key := flag.String("key", "demo/empty_living_room.jpg", "original_key of every job")
	logPath := flag.String("log", "", "the sidecar's log (job mode)")
	n := flag.Int("n", 200, "jobs")
	clients := flag.Int("c", 8, "concurrent clients (reject mode)")
	flag.Parse()
	var err error
	switch *mode {
	case "job":
		err = jobs(*url, *key, *logPath, *n)
	case "reject":
		err = rejections(*url, *key, *n, *clients)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "overhead:", err)
		os.Exit(1)
	}
}

func jobs(url, key, logPath string, n int) error {
	client := &http.Client{}
	run := time.Now().UnixNano()
	latency := map[string]time.Duration{}
	for i := range n {
		id := fmt.Sprintf("ovh-%d-%d", run, i)
		t0 := time.Now()
		status, err := benchhttp.Post(context.Background(), client, url, body(id, key))
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("job %s: status %d: %v", id, status, err)
		}
		latency[id] = time.Since(t0)
	}
	// The request line is written after the answer is sent; give the
	// last one a moment to reach the file.
	time.Sleep(200 * time.Millisecond)
	engine, call, err := times(logPath)
	if err != nil {
		return err
	}
	var total, own, added, calls, sidecar, transport []time.Duration
	for id, l := range latency {
		e, ok := engine[id]
		c, ok2 := call[id]
		if !ok || !ok2 {
			return fmt.Errorf("no engine time or backend time for %s in %s", id, logPath)
		}
		total, own, added = append(total, l), append(own, e), append(added, l-e)
		calls, sidecar = append(calls, c), append(sidecar, l-c)
		transport = append(transport, c-e)
	}
	fmt.Printf("%d sequential jobs\n", n)
	report("end to end", total)
	report("engine (own)", own)
	report("minus engine", added)
	report("engine call", calls)
	report("minus call", sidecar)
	report("call - engine", transport)
	return nil
}

// times reads, per image_id, the engine's own time (engine_ms) and the
// backend call's time as the sidecar saw it (backend_ms) from the
// sidecar's request lines.
func times(path string) (engine, call map[string]time.Duration, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	engine, call = map[string]time.Duration{}, map[string]time.Duration{}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg       string  `json:"msg"`
			ImageID   string  `json:"image_id"`
			EngineMS  float64 `json:"engine_ms"`
			BackendMS float64 `json:"backend_ms"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "request" || line.EngineMS <= 0 {
			continue
		}
		engine[line.ImageID], call[line.ImageID] = ms(line.EngineMS), ms(line.BackendMS)
	}
	return engine, call, sc.Err()
}

func rejections(url, key string, n, clients int) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	run := time.Now().UnixNano()
	var mu sync.Mutex
	var lat []time.Duration
	other := 0
	var wg sync.WaitGroup
	next := make(chan int)
	go func() {
		for i := range n {
			next <- i
		}
		close(next)
	}()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				status, err := benchhttp.Post(context.Background(), client, url, body(fmt.Sprintf("rej-%d-%d", run, i), key))
				d := time.Since(t0)
				mu.Lock()
				if err == nil && status == http.StatusTooManyRequests {
					lat = append(lat, d)
				} else {
					other++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%d refusals from %d clients in %.2fs (%.0f/s), %d other answers\n",
		len(lat), clients, time.Since(start).Seconds(), float64(len(lat))/time.Since(start).Seconds(), other)
	report("429 latency", lat)
	return nil
}

func body(id, key string) []byte {
	b, _ := json.Marshal(map[string]any{"image_id": id, "original_key": key, "room_type": "living_room", "style": "modern", "seed": 1})
	return b
}

func report(name string, d []time.Duration) {
	if len(d) == 0 {
		fmt.Printf("%-13s no samples\n", name)
		return
	}
	slices.Sort(d)
	p := func(q float64) float64 { return float64(benchhttp.Quantile(d, q).Microseconds()) / 1000 }
	fmt.Printf("%-13s p50 %7.2fms  p90 %7.2fms  p99 %7.2fms  max %7.2fms\n", name, p(.50), p(.90), p(.99), p(1))
}
