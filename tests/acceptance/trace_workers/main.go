// A Go-client worker for tests/acceptance/test_trace_languages.py: takes one task, prints
// {"id", "trace"} (the task's trace context, Job.Trace) on stdout, stops.
//
//	worker URL QUEUE
package main

import (
	"context"
	"encoding/json"
	"log"
	"os"

	katar "github.com/katar-dev/katar/clients/go"
)

func main() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	handle := func(_ context.Context, job *katar.Job) (any, error) {
		line, err := json.Marshal(map[string]any{"id": job.ID, "trace": job.Trace})
		if err != nil {
			return nil, err
		}
		os.Stdout.Write(append(line, '\n'))
		stop() // Run finishes this task, sends its ack, and returns
		return map[string]string{"by": "go"}, nil
	}
	worker := katar.NewWorker(os.Args[1], os.Args[2], handle, katar.WithConcurrency(1))
	if err := worker.Run(ctx); err != nil {
		log.Fatalf("stopping: %v", err)
	}
}
