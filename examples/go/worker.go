// A Katar worker in Go (1.19 or newer), with the katar client (clients/go).
//
//	cd examples/go && KATAR_URL=http://127.0.0.1:3000 go run . QUEUE
//
// The client does everything docs/workers.md describes: up to KATAR_CONCURRENCY tasks at once
// (4 by default) taken in batches, long polls while idle, the acks of finished tasks riding
// on the next poll, heartbeats for tasks that outlast a third of their lease, operators'
// cancels (the handler's context is cancelled), backoff without losing an ack, and a clean
// stop on SIGTERM or SIGINT.
//
// The work: a task's data is {"n": <number>, "ms": <optional milliseconds of work>}; its
// result is {"by": "go", "square": n*n}. Replace handle with your own.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	katar "github.com/katar-dev/katar/clients/go"
)

func handle(ctx context.Context, job *katar.Job) (any, error) {
	var data struct {
		N  int `json:"n"`
		Ms int `json:"ms"`
	}
	if err := job.Decode(&data); err != nil {
		return nil, katar.Fail(fmt.Errorf("the data is not {\"n\": ...}: %w", err))
	}
	select {
	case <-time.After(time.Duration(data.Ms) * time.Millisecond):
	case <-ctx.Done(): // an operator cancelled the task
		return nil, ctx.Err()
	}
	return map[string]any{"by": "go", "square": data.N * data.N}, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: worker QUEUE")
		os.Exit(2)
	}
	url := os.Getenv("KATAR_URL")
	if url == "" {
		url = "http://127.0.0.1:3000"
	}
	concurrency := 4
	if n, err := strconv.Atoi(os.Getenv("KATAR_CONCURRENCY")); err == nil {
		concurrency = n
	}
	// SIGTERM or SIGINT cancels ctx: the worker takes no more tasks, finishes the running
	// ones, sends their acks, and Run returns.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	worker := katar.NewWorker(url, os.Args[1], handle,
		katar.WithToken(os.Getenv("KATAR_TOKEN")), katar.WithConcurrency(concurrency))
	if err := worker.Run(ctx); err != nil {
		// 401, 403, or 404 for the queue: a setup mistake (the token, or the queue's name).
		log.Printf("stopping: %v", err)
		os.Exit(1)
	}
}
