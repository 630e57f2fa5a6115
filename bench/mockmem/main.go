// Command mockmem measures the memory of a mock-mode sidecar under hostile
// and ordinary load. It writes its inputs straight into the sidecar's local
// store folder, then (1) sends a burst of concurrent jobs for 36 MP inputs,
// 6000x6000 PNGs and then JPEGs that are each a few KB to a few hundred KB
// on disk, reporting the sidecar's peak resident memory (VmHWM) for each
// burst, and (2) runs ordinary jobs for the bundled 1536x1024 sample photo
// and reports the resident memory (VmRSS) right after, and again after a
// pause.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vstage/vstage/bench/internal/benchhttp"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/infer", "the /infer URL")
	store := flag.String("store", "", "the sidecar's local store folder")
	pid := flag.Int("pid", 0, "the sidecar's process id")
	burst := flag.Int("burst", 16, "concurrent jobs with a 36 MP input")
	jobs := flag.Int("jobs", 1000, "ordinary jobs after the bursts")
	clients := flag.Int("c", 16, "concurrent clients of the ordinary jobs")
	pause := flag.Duration("pause", 10*time.Second, "wait before the last RSS reading")
	limit := flag.Duration("timeout", 30*time.Minute, "deadline of the ordinary jobs")
	flag.Parse()
	if err := run(*url, *store, *pid, *burst, *jobs, *clients, *pause, *limit); err != nil {
		fmt.Fprintln(os.Stderr, "mockmem:", err)
		os.Exit(1)
	}
}

func run(url, store string, pid, burst, jobs, clients int, pause, limit time.Duration) error {
	if store == "" || pid == 0 {
		return fmt.Errorf("-store and -pid are required")
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	fmt.Printf("at start: VmRSS %s, VmHWM %s\n", mib(status(pid, "VmRSS")), mib(status(pid, "VmHWM")))
	for _, f := range []struct {
		name string
		enc  func(io.Writer, image.Image) error
	}{
		{"png", png.Encode},
		{"jpg", func(w io.Writer, m image.Image) error { return jpeg.Encode(w, m, &jpeg.Options{Quality: 90}) }},
	} {
		key := "mem/big." + f.name
		size, err := writeInput(filepath.Join(store, key), f.enc)
		if err != nil {
			return err
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
			return fmt.Errorf("reset the peak RSS: %w", err)
		}
		statuses := fire(url, key, run+"-"+f.name, burst, burst, 5*time.Minute)
		fmt.Printf("burst: %d concurrent 6000x6000 %s inputs (%d bytes each): statuses %v, peak VmHWM %s, then VmRSS %s\n",
			burst, strings.ToUpper(f.name), size, statuses, mib(status(pid, "VmHWM")), mib(status(pid, "VmRSS")))
	}
	start := time.Now()
	statuses := fire(url, "demo/empty_living_room.jpg", run+"-ordinary", jobs, clients, limit)
	fmt.Printf("ordinary: %d jobs of the 1536x1024 sample from %d clients in %.1fs: statuses %v, VmRSS right after %s\n",
		jobs, clients, time.Since(start).Seconds(), statuses, mib(status(pid, "VmRSS")))
	time.Sleep(pause)
	fmt.Printf("after %s idle: VmRSS %s\n", pause, mib(status(pid, "VmRSS")))
	return nil
}

// writeInput writes a 6000x6000 picture with soft gradients: it compresses
// well, as a hostile input would, yet decodes to the full 36 MP.
func writeInput(path string, enc func(io.Writer, image.Image) error) (int, error) {
	const side = 6000
	m := image.NewRGBA(image.Rect(0, 0, side, side))
	for y := range side {
		for x := range side {
			m.SetRGBA(x, y, color.RGBA{uint8(x / 24), uint8(y / 24), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := enc(&buf, m); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return 0, err
	}
	return buf.Len(), os.WriteFile(path, buf.Bytes(), 0o640)
}

// fire sends n jobs for key from c clients, each with its own image_id.
func fire(url, key, prefix string, n, c int, timeout time.Duration) map[int]int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c}}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		statuses = map[int]int{}
		wg       sync.WaitGroup
	)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				body := fmt.Sprintf(`{"image_id":"%s-%d","original_key":%q,"room_type":"living_room","style":"modern","seed":1}`, prefix, i, key)
				code, err := benchhttp.Post(ctx, client, url, []byte(body))
				if err != nil {
					code = -1
				}
				mu.Lock()
				statuses[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return statuses
}

// status reads a "kB" field of /proc/<pid>/status, in bytes.
func status(pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
