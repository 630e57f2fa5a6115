// Command worker feeds the vstage service from asynq queues in Redis and
// records each image's result in PostgreSQL. Run `worker help` for the
// commands; settings are environment variables (see the README).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vstage/vstage/worker/internal/cli"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return cli.Main(ctx, os.Args[1:], cli.Env{Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr})
}
