package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/vstage/vstage/client"
)

// fakeService stands in for vstage: it answers every /infer with the
// staged key of the image id, as a replay when it saw the id before.
func fakeService() *httptest.Server {
	seen := map[string]bool{}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req client.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.ImageID == "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":{"code":"invalid_input","message":"image_id is required","retryable":false}}`)
			return
		}
		if seen[req.ImageID] {
			w.Header().Set("Idempotent-Replay", "true")
		}
		seen[req.ImageID] = true
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"staged_key":"staged/%s.jpg","width":1024,"height":768,"model_rev":"sdxl-1","seed":7,"duration_ms":1830,"backend":"self"}`, req.ImageID)
	}))
}

func ExampleClient_Infer() {
	srv := fakeService()
	defer srv.Close()

	c, err := client.New(srv.URL, client.WithMaxAttempts(3))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := client.Request{ImageID: "listing-17-room-2", OriginalKey: "originals/listing-17/room-2.jpg", RoomType: "living_room", Style: "scandinavian"}
	for range 2 {
		resp, err := c.Infer(ctx, req)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(resp.StagedKey, resp.Width, resp.Height, resp.Backend, "replay:", resp.Replay)
	}
	// Output:
	// staged/listing-17-room-2.jpg 1024 768 self replay: false
	// staged/listing-17-room-2.jpg 1024 768 self replay: true
}

func ExampleError() {
	srv := fakeService()
	defer srv.Close()

	c, _ := client.New(srv.URL)
	_, err := c.Infer(context.Background(), client.Request{})
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.StatusCode, e.Code == client.CodeInvalidInput, e.Retryable)
		fmt.Println(e.Message)
	}
	// Output:
	// 400 true false
	// image_id is required
}
