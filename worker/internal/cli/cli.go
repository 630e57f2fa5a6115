// Package cli is the worker's command line: migrate, run, enqueue, status,
// pause and resume.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/hibiken/asynq"

	"github.com/vstage/vstage/worker/internal/config"
	"github.com/vstage/vstage/worker/internal/queue"
	"github.com/vstage/vstage/worker/internal/store"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
	// ExitTryLater is sysexits' EX_TEMPFAIL: the queue is full.
	ExitTryLater = 75
)

const usage = `usage: worker <command> [flags]

commands:
  migrate                 apply the database migrations
  run                     run jobs from the queues until SIGTERM
  enqueue --image-id ID --original-key KEY --room-type T --style S [--tier free|pro|business] [--seed N] [--mask-key KEY] [--label true|false] [--upscale]
                          queue one image (twice is one job); exit 75 when the queue is full
  status --image-id ID    print the image's row and job as JSON
  pause --queue Q|all     stop starting jobs of the queue; running jobs finish, queued ones stay
  resume --queue Q|all    undo pause

Settings are environment variables; see the README.
`

// Env is what a command gets from its process.
type Env struct {
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
}

// Main runs the command in args (without the program name) and returns
// its exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 {
		fmt.Fprint(env.Stderr, usage)
		return ExitUsage
	}
	cfg, err := config.Load(env.Getenv)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(env.Stderr, "worker: invalid configuration: %s\n", line)
		}
		return ExitUsage
	}
	log := slog.New(slog.NewJSONHandler(env.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "migrate":
		return migrate(ctx, cfg, env, log)
	case "run":
		if err := run(ctx, cfg, log); err != nil {
			log.Error("worker stopped", "error", err)
			return ExitError
		}
		return ExitOK
	case "enqueue":
		return enqueue(ctx, cfg, rest, env)
	case "status":
		return status(ctx, cfg, rest, env)
	case "pause", "resume":
		return pause(cfg, cmd, rest, env)
	case "help", "-h", "--help":
		fmt.Fprint(env.Stdout, usage)
		return ExitOK
	}
	fmt.Fprintf(env.Stderr, "worker: unknown command %q\n\n%s", cmd, usage)
	return ExitUsage
}

func migrate(ctx context.Context, cfg config.Config, env Env, log *slog.Logger) int {
	db, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	}
	defer db.Close()
	applied, err := db.Migrate(ctx)
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	}
	log.Info("migrations applied", "versions", applied)
	return ExitOK
}

// flags parses a command's flags; a problem is reported and false returned.
func flags(name string, args []string, env Env, define func(*flag.FlagSet)) bool {
	fs := flag.NewFlagSet("worker "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	define(fs)
	if err := fs.Parse(args); err != nil {
		return false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "worker %s: unexpected arguments %q\n", name, fs.Args())
		return false
	}
	return true
}

func redisConn(cfg config.Config, env Env) (asynq.RedisConnOpt, bool) {
	conn, err := asynq.ParseRedisURI(cfg.RedisURL)
	if err != nil {
		// The parser's message may quote the URL, password included.
		fmt.Fprintln(env.Stderr, "worker: REDIS_URL is not a redis://, rediss:// or redis-socket:// URL")
		return nil, false
	}
	return conn, true
}

func newQueue(cfg config.Config, conn asynq.RedisConnOpt) *queue.Queue {
	return queue.New(conn, queue.Options{Caps: cfg.Caps, MaxRetry: cfg.MaxRetry, Deadline: cfg.JobDeadline, Retention: cfg.Retention})
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func status(ctx context.Context, cfg config.Config, args []string, env Env) int {
	var id string
	if !flags("status", args, env, func(fs *flag.FlagSet) { fs.StringVar(&id, "image-id", "", "the image") }) {
		return ExitUsage
	}
	if id == "" {
		fmt.Fprintln(env.Stderr, "worker status: --image-id is required")
		return ExitUsage
	}
	db, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	}
	defer db.Close()
	row, err := db.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		fmt.Fprintf(env.Stderr, "worker status: no image %q\n", id)
		return ExitError
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "worker: %v\n", err)
		return ExitError
	}
	printJSON(env.Stdout, row)
	return ExitOK
}

func pause(cfg config.Config, cmd string, args []string, env Env) int {
	var name string
	if !flags(cmd, args, env, func(fs *flag.FlagSet) { fs.StringVar(&name, "queue", "", "business, pro, free or all") }) {
		return ExitUsage
	}
	names := []string{name}
	if name == "all" {
		names = config.Tiers
	} else if _, err := config.ParseTier(name); err != nil || name == "" {
		fmt.Fprintf(env.Stderr, "worker %s: --queue must be one of %s or all\n", cmd, strings.Join(config.Tiers, ", "))
		return ExitUsage
	}
	conn, ok := redisConn(cfg, env)
	if !ok {
		return ExitUsage
	}
	q := newQueue(cfg, conn)
	defer q.Close()
	for _, n := range names {
		var err error
		if cmd == "pause" {
			err = q.Pause(n)
		} else {
			err = q.Resume(n)
		}
		if err != nil {
			fmt.Fprintf(env.Stderr, "worker: %v\n", err)
			return ExitError
		}
		fmt.Fprintf(env.Stdout, "%s: %sd\n", n, cmd)
	}
	return ExitOK
}
