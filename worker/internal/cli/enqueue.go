package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"regexp"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/worker/internal/config"
	"github.com/vstage/vstage/worker/internal/queue"
	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/tracing"
)

// imageID is the service's own rule for image_id; checking it here refuses
// a bad job at enqueue instead of failing it later.
var imageID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// enqueued is what enqueue prints.
type enqueued struct {
	ImageID string `json:"image_id"`
	Queue   string `json:"queue"`
	// Result is enqueued, duplicate (a job for the image exists), or the
	// image's final status (staged, failed) when it needs no job.
	Result string `json:"result"`
}

func enqueue(ctx context.Context, cfg config.Config, args []string, env Env) int {
	var img store.Image
	var tier, seed, label string
	ok := flags("enqueue", args, env, func(fs *flag.FlagSet) {
		fs.StringVar(&img.ID, "image-id", "", "the image's id, also the job's (required)")
		fs.StringVar(&img.OriginalKey, "original-key", "", "storage key of the empty-room photo (required)")
		fs.StringVar(&img.RoomType, "room-type", "", "room type, as in the service's catalogue (required)")
		fs.StringVar(&img.Style, "style", "", "style, as in the service's catalogue (required)")
		fs.StringVar(&img.MaskKey, "mask-key", "", "storage key of an inpainting mask")
		fs.StringVar(&tier, "tier", "free", "business, pro or free")
		fs.StringVar(&seed, "seed", "", "seed, 0 to 4294967295 (default: the service draws one)")
		fs.StringVar(&label, "label", "", "true or false: burn in the disclosure label (default: the service's)")
		fs.BoolVar(&img.Upscale, "upscale", false, "upscale the output (the service allows it to some tiers)")
	})
	if !ok {
		return ExitUsage
	}
	if msg := checkImage(img, seed); msg != "" {
		fmt.Fprintf(env.Stderr, "worker enqueue: %s\n", msg)
		return ExitUsage
	}
	switch label {
	case "":
	case "true", "false":
		v := label == "true"
		img.Label = &v
	default:
		fmt.Fprintf(env.Stderr, "worker enqueue: --label must be true or false, got %q\n", label)
		return ExitUsage
	}
	if seed != "" {
		n, _ := strconv.ParseUint(seed, 10, 32)
		s := uint32(n)
		img.Seed = &s
	}
	tier, err := config.ParseTier(tier)
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker enqueue: --%v\n", err)
		return ExitUsage
	}
	conn, ok := redisConn(cfg, env)
	if !ok {
		return ExitUsage
	}
	q := newQueue(cfg, conn)
	defer q.Close()
	db, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	}
	defer db.Close()
	tp, err := tracing.New(ctx, cfg.TracesExporter)
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	}
	defer func() { _ = tp.Shutdown(context.WithoutCancel(ctx)) }()
	// The task keeps this span's context; the job's spans link to it.
	ctx, span := tp.Tracer("github.com/vstage/vstage/worker").Start(ctx, "vstage.enqueue",
		trace.WithAttributes(attribute.String("vstage.image_id", img.ID), attribute.String("vstage.tier", tier)))
	defer span.End()
	out := enqueued{ImageID: img.ID, Queue: tier, Result: "enqueued"}
	got, err := db.Enqueue(ctx, img, tier, func() error { return q.Enqueue(ctx, queue.Payload{Image: img, Tier: tier}) })
	switch {
	case errors.Is(err, queue.ErrDuplicate):
		out.Result = "duplicate"
	case errors.Is(err, queue.ErrFull):
		fmt.Fprintf(env.Stderr, "worker enqueue: %v\n", err)
		return ExitTryLater
	case errors.Is(err, store.ErrConflict):
		fmt.Fprintf(env.Stderr, "worker enqueue: image %s is already recorded with other parameters; use a new image_id\n", img.ID)
		return ExitError
	case err != nil:
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	case got.Status == store.StatusStaged || got.Status == store.StatusFailed:
		out.Result = got.Status
	case !got.New:
		// Recorded earlier with its task lost; the task is back now.
		out.Result = "enqueued"
	}
	printJSON(env.Stdout, out)
	return ExitOK
}

func checkImage(img store.Image, seed string) string {
	switch {
	case !imageID.MatchString(img.ID):
		return "--image-id must be 1 to 128 characters of A-Z, a-z, 0-9, _ and -"
	case img.OriginalKey == "" || img.RoomType == "" || img.Style == "":
		return "--original-key, --room-type and --style are required"
	}
	if seed != "" {
		if n, err := strconv.ParseUint(seed, 10, 64); err != nil || n > math.MaxUint32 {
			return "--seed must be an integer from 0 to 4294967295"
		}
	}
	return ""
}
