package katar

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func eachStore(t *testing.T, test func(t *testing.T, s *server)) {
	for _, store := range stores() {
		store := store
		t.Run(store, func(t *testing.T) { test(t, newServer(t, store, "")) })
	}
}

// running starts w.Run in a goroutine; the returned function stops it and returns Run's error.
func start(t *testing.T, w *Worker) func() error {
	ctx, cancel := context.WithCancel(background)
	result := make(chan error, 1)
	go func() { result <- w.Run(ctx) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-result
		}
	})
	return func() error {
		stopped = true
		cancel()
		select {
		case err := <-result:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("the worker did not stop")
			return nil
		}
	}
}

func quiet() Option { return WithLogger(nil) }

func TestProducer(t *testing.T) {
	eachStore(t, func(t *testing.T, s *server) {
		s.queue("p", nil)
		p := NewProducer(s.url())
		one, err := p.Enqueue(background, "p", map[string]int{"n": 1}, &EnqueueOptions{Priority: PriorityHigh, Key: "customer-1"})
		if err != nil {
			t.Fatal(err)
		}
		if one.Status != "queued" || one.Priority != 10 || string(one.Data) != `{"n":1}` {
			t.Fatalf("%+v", one)
		}
		many, err := p.EnqueueMany(background, "p", []any{2, 3, 4}, &EnqueueOptions{Delay: time.Hour})
		if err != nil || len(many) != 3 || string(many[2].Data) != "4" || many[0].RunAt == nil {
			t.Fatalf("%v %+v", err, many)
		}
		got, err := p.Get(background, "p", many[1].ID, 0)
		if err != nil || string(got.Data) != "3" {
			t.Fatalf("%v %+v", err, got)
		}
		first, err := p.List(background, "p", ListOptions{Limit: 2})
		if err != nil || len(first.Tasks) != 2 || first.Next == "" {
			t.Fatalf("%v %+v", err, first)
		}
		rest, err := p.List(background, "p", ListOptions{After: first.Next})
		if err != nil || len(rest.Tasks) != 2 || rest.Next != "" {
			t.Fatalf("%v %+v", err, rest)
		}
		cancelled, err := p.Cancel(background, "p", one.ID)
		if err != nil || cancelled.Status != "cancelled" {
			t.Fatalf("%v %+v", err, cancelled)
		}
		var katarErr *Error
		if _, err := p.Get(background, "p", "999999", 0); !errors.As(err, &katarErr) || katarErr.Status != 404 {
			t.Fatalf("want a 404, got %v", err)
		}
		_, err = p.Enqueue(background, "p", 1, &EnqueueOptions{Delay: time.Second, RunAt: time.Now()})
		if !errors.As(err, &katarErr) || katarErr.Status != 422 || katarErr.Transient() {
			t.Fatalf("want a 422, got %v", err)
		}
		if _, err := p.Enqueue(background, "nosuch", 1, nil); !errors.As(err, &katarErr) || katarErr.Status != 404 {
			t.Fatalf("want a 404, got %v", err)
		}
	})
}

type recorder struct {
	mu      sync.Mutex
	headers []http.Header
	polls   []map[string]any
	got     []int
}

func (r *recorder) RoundTrip(request *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.headers = append(r.headers, request.Header.Clone())
	r.mu.Unlock()
	var body map[string]any
	if request.Method == "POST" && request.Body != nil && !strings.HasSuffix(request.URL.Path, "/tasks") {
		data, _ := request.GetBody()
		json.NewDecoder(data).Decode(&body)
	}
	response, err := http.DefaultTransport.RoundTrip(request)
	if body != nil && err == nil {
		n := 0
		if response.StatusCode == 200 {
			var answer struct{ Tasks []any }
			data := new(strings.Builder)
			buffer := make([]byte, 4096)
			for {
				k, e := response.Body.Read(buffer)
				data.Write(buffer[:k])
				if e != nil {
					break
				}
			}
			response.Body.Close()
			json.Unmarshal([]byte(data.String()), &answer)
			n = len(answer.Tasks)
			response.Body = readCloser{strings.NewReader(data.String())}
		}
		r.mu.Lock()
		r.polls = append(r.polls, body)
		r.got = append(r.got, n)
		r.mu.Unlock()
	}
	return response, err
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

func TestIdempotencyKeysAndTraceContext(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("idem", nil)
	rec := &recorder{}
	p := NewProducer(s.url(), WithHTTPClient(&http.Client{Transport: rec}))
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	a, err := p.Enqueue(background, "idem", 1, &EnqueueOptions{IdempotencyKey: "order-17", Traceparent: parent, Tracestate: "k=v"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Enqueue(background, "idem", 1, &EnqueueOptions{IdempotencyKey: "order-17"})
	if err != nil || a.ID != b.ID {
		t.Fatalf("the repeat created a task: %v %s %s", err, a.ID, b.ID)
	}
	p.Enqueue(background, "idem", 2, nil)
	p.Enqueue(background, "idem", 2, nil)
	h := rec.headers
	if h[0].Get("Idempotency-Key") != "order-17" || h[0].Get("traceparent") != parent || h[0].Get("tracestate") != "k=v" || h[1].Get("traceparent") != "" {
		t.Fatalf("headers: %v", h[:2])
	}
	if h[2].Get("Idempotency-Key") == h[3].Get("Idempotency-Key") {
		t.Fatal("two calls sent the same key")
	}
	page, _ := p.List(background, "idem", ListOptions{})
	if len(page.Tasks) != 3 {
		t.Fatalf("%d tasks", len(page.Tasks))
	}
}

func TestMessageAttributes(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("tagged", nil)
	p := NewProducer(s.url())
	given := &MessageAttributes{MessageAttributes: map[string]MessageAttributeValue{
		"lang": {DataType: "String", StringValue: "en"},
		"raw":  {DataType: "Binary", BinaryValue: []byte{0, 1, 255}},
	}}
	task, err := p.Enqueue(background, "tagged", 1, &EnqueueOptions{Attributes: given})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Get(background, "tagged", task.ID, 0)
	if err != nil || got.Attributes == nil {
		t.Fatalf("%v %+v", err, got)
	}
	raw := got.Attributes.MessageAttributes["raw"]
	if got.Attributes.MessageAttributes["lang"].StringValue != "en" || string(raw.BinaryValue) != "\x00\x01\xff" || raw.DataType != "Binary" {
		t.Fatalf("attributes: %+v", got.Attributes)
	}
	bad := &MessageAttributes{MessageAttributes: map[string]MessageAttributeValue{"AWS.x": {DataType: "String", StringValue: "v"}}}
	_, err = p.Enqueue(background, "tagged", 1, &EnqueueOptions{Attributes: bad})
	if err == nil || !strings.Contains(err.Error(), "AWS.x") {
		t.Fatalf("an invalid name was taken: %v", err)
	}
}

func TestWorkerRunsTasksSideBySideInBatches(t *testing.T) {
	eachStore(t, func(t *testing.T, s *server) {
		s.queue("c", map[string]any{"configuration": map[string]any{"interval": 100}})
		p := NewProducer(s.url())
		data := make([]any, 12)
		for i := range data {
			data[i] = map[string]int{"n": i}
		}
		if _, err := p.EnqueueMany(background, "c", data, nil); err != nil {
			t.Fatal(err)
		}
		var now, most int32
		rec := &recorder{}
		w := NewWorker(s.url(), "c", func(ctx context.Context, job *Job) (any, error) {
			n := atomic.AddInt32(&now, 1)
			for {
				m := atomic.LoadInt32(&most)
				if n <= m || atomic.CompareAndSwapInt32(&most, m, n) {
					break
				}
			}
			time.Sleep(150 * time.Millisecond)
			atomic.AddInt32(&now, -1)
			var task struct{ N int }
			if err := job.Decode(&task); err != nil {
				return nil, err
			}
			return map[string]int{"square": task.N * task.N}, nil
		}, WithConcurrency(4), quiet(), WithHTTPClient(&http.Client{Transport: rec}))
		stop := start(t, w)
		until(t, 60*time.Second, "12 done", func() bool {
			page, err := p.List(background, "c", ListOptions{Status: "done", Limit: 100})
			return err == nil && len(page.Tasks) == 12
		})
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if most != 4 {
			t.Fatalf("at most %d at once, want 4", most)
		}
		batched, carried := false, false
		for i, poll := range rec.polls {
			if poll["max"].(float64) > 1 && rec.got[i] > 1 {
				batched = true
			}
			for _, a := range poll["tasks"].([]any) {
				if a.(map[string]any)["status"] == "done" && poll["max"].(float64) > 0 {
					carried = true
				}
			}
		}
		if !batched || !carried {
			t.Fatalf("batched %v, acks carried on polls %v", batched, carried)
		}
		page, _ := p.List(background, "c", ListOptions{Status: "done", Limit: 100})
		for _, task := range page.Tasks {
			var in struct{ N int }
			var out struct{ Square int }
			task.Decode(&in)
			task.DecodeResult(&out)
			if out.Square != in.N*in.N {
				t.Fatalf("%s: %s", task.Data, task.Result)
			}
		}
	})
}

func TestWorkerHeartbeatsWithProgress(t *testing.T) {
	eachStore(t, func(t *testing.T, s *server) {
		s.queue("slow", map[string]any{"timeout": 1500})
		p := NewProducer(s.url())
		task, _ := p.Enqueue(background, "slow", map[string]int{"steps": 6}, nil)
		w := NewWorker(s.url(), "slow", func(ctx context.Context, job *Job) (any, error) {
			for step := 1; step <= 6; step++ {
				time.Sleep(500 * time.Millisecond)
				job.Progress(map[string]int{"done": step, "of": 6})
			}
			return "ok", nil
		}, quiet())
		stop := start(t, w)
		seen := false
		until(t, 60*time.Second, "the slow task done", func() bool {
			record, err := p.Get(background, "slow", task.ID, 0)
			if err != nil {
				return false
			}
			if record.Status == "in progress" && len(record.Progress) > 0 {
				seen = true
			}
			return record.Status == "done"
		})
		stop()
		record, _ := p.Get(background, "slow", task.ID, 0)
		if record.Attempts != 1 || string(record.Result) != `"ok"` || !seen {
			t.Fatalf("attempts %d, result %s, progress seen %v", record.Attempts, record.Result, seen)
		}
		var progress struct{ Done, Of int }
		json.Unmarshal(record.Progress, &progress)
		if progress.Of != 6 || progress.Done < 1 {
			t.Fatalf("progress %s", record.Progress)
		}
	})
}

func TestWorkerCancelsTheContextOfACancelledTask(t *testing.T) {
	eachStore(t, func(t *testing.T, s *server) {
		s.queue("cancel", map[string]any{"timeout": 1500})
		p := NewProducer(s.url())
		doomed, _ := p.Enqueue(background, "cancel", map[string]bool{"hold": true}, nil)
		var seen atomic.Value
		w := NewWorker(s.url(), "cancel", func(ctx context.Context, job *Job) (any, error) {
			var data struct{ Hold bool }
			job.Decode(&data)
			if !data.Hold {
				return "later", nil
			}
			<-ctx.Done()
			seen.Store(job.Cancelled())
			return nil, ctx.Err()
		}, WithConcurrency(2), quiet())
		stop := start(t, w)
		until(t, 30*time.Second, "running", func() bool {
			record, err := p.Get(background, "cancel", doomed.ID, 0)
			return err == nil && record.Status == "in progress"
		})
		asked, err := p.Cancel(background, "cancel", doomed.ID)
		if err != nil || !asked.CancelRequested {
			t.Fatalf("%v %+v", err, asked)
		}
		until(t, 30*time.Second, "the context cancelled", func() bool { return seen.Load() != nil })
		if seen.Load() != true {
			t.Fatal("the job did not say it was cancelled")
		}
		later, _ := p.Enqueue(background, "cancel", map[string]bool{"hold": false}, nil)
		if record, err := p.Get(background, "cancel", later.ID, 30*time.Second); err != nil || record.Status != "done" {
			t.Fatalf("%v %+v", err, record)
		}
		stop()
		if record, _ := p.Get(background, "cancel", doomed.ID, 0); record.Status != "cancelled" {
			t.Fatalf("status %s", record.Status)
		}
	})
}

func TestRetryAndFail(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("fail", map[string]any{"retry_delay": 0})
	p := NewProducer(s.url())
	retried, _ := p.Enqueue(background, "fail", "retry", nil)
	failed, _ := p.Enqueue(background, "fail", "fail", nil)
	panicked, _ := p.Enqueue(background, "fail", "panic", nil)
	w := NewWorker(s.url(), "fail", func(ctx context.Context, job *Job) (any, error) {
		switch string(job.Data) {
		case `"retry"`:
			if job.Attempt == 1 {
				return nil, Retry(errors.New("not yet"))
			}
			return job.Attempt, nil
		case `"panic"`:
			panic("oops")
		}
		return nil, Fail(errors.New("broken"))
	}, quiet())
	stop := start(t, w)
	a, _ := p.Get(background, "fail", retried.ID, 30*time.Second)
	b, _ := p.Get(background, "fail", failed.ID, 30*time.Second)
	c, _ := p.Get(background, "fail", panicked.ID, 30*time.Second)
	stop()
	if a.Status != "done" || string(a.Result) != "2" || b.Status != "failed" || b.Error != "broken" || !strings.Contains(c.Error, "panic: oops") {
		t.Fatalf("%+v\n%+v\n%+v", a, b, c)
	}
}

func TestGracefulStopFinishesTheRunningTask(t *testing.T) {
	eachStore(t, func(t *testing.T, s *server) {
		s.queue("g", nil)
		p := NewProducer(s.url())
		first, _ := p.Enqueue(background, "g", 800, nil)
		var started int32
		w := NewWorker(s.url(), "g", func(ctx context.Context, job *Job) (any, error) {
			atomic.AddInt32(&started, 1)
			var ms int
			job.Decode(&ms)
			time.Sleep(time.Duration(ms) * time.Millisecond)
			return "finished", nil
		}, quiet())
		stop := start(t, w)
		until(t, 30*time.Second, "started", func() bool { return atomic.LoadInt32(&started) == 1 })
		queued, _ := p.Enqueue(background, "g", 0, nil)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		a, _ := p.Get(background, "g", first.ID, 0)
		b, _ := p.Get(background, "g", queued.ID, 0)
		if a.Status != "done" || b.Status != "queued" || started != 1 {
			t.Fatalf("%s %s %d", a.Status, b.Status, started)
		}
	})
}

func TestATaskThatOutlastsTheGraceIsAbandoned(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("grace", map[string]any{"timeout": 60000})
	p := NewProducer(s.url())
	task, _ := p.Enqueue(background, "grace", 1, nil)
	var cancelled int32
	w := NewWorker(s.url(), "grace", func(ctx context.Context, job *Job) (any, error) {
		<-ctx.Done()
		atomic.StoreInt32(&cancelled, 1)
		return nil, ctx.Err()
	}, WithGrace(200*time.Millisecond), quiet())
	stop := start(t, w)
	until(t, 30*time.Second, "running", func() bool {
		record, err := p.Get(background, "grace", task.ID, 0)
		return err == nil && record.Status == "in progress"
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "the handler's context cancelled", func() bool { return atomic.LoadInt32(&cancelled) == 1 })
	// No ack: the task stays leased until its lease runs out, then is delivered again.
	if record, _ := p.Get(background, "grace", task.ID, 0); record.Status != "in progress" {
		t.Fatalf("status %s", record.Status)
	}
}

func TestAStopCutsALongPollShort(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("idle", nil)
	log := &lines{}
	w := NewWorker(s.url(), "idle", func(ctx context.Context, job *Job) (any, error) { return nil, nil },
		WithWait(60*time.Second), WithLogger(logger(log)))
	stop := start(t, w)
	until(t, 30*time.Second, "ready", func() bool { return log.count("ready") == 1 })
	time.Sleep(300 * time.Millisecond) // in its long poll
	began := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if time.Since(began) > 20*time.Second {
		t.Fatal("the stop waited for the long poll")
	}
}

func TestBackoffWhileTheServerIsDown(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("down", map[string]any{"configuration": map[string]any{"interval": 100}})
	p := NewProducer(s.url())
	log := &lines{}
	gate := make(chan struct{})
	var holding int32
	w := NewWorker(s.url(), "down", func(ctx context.Context, job *Job) (any, error) {
		if string(job.Data) == `"hold"` {
			atomic.StoreInt32(&holding, 1)
			<-gate
		}
		return string(job.Data), nil
	}, WithMaxBackoff(time.Second), WithLogger(logger(log)))
	stop := start(t, w)
	held, _ := p.Enqueue(background, "down", "hold", nil)
	until(t, 30*time.Second, "the held task running", func() bool { return atomic.LoadInt32(&holding) == 1 })
	s.kill()
	close(gate) // finished while the server is down: its ack must survive
	until(t, 30*time.Second, "three tries", func() bool { return log.count("no answer from the server") >= 3 })
	before := log.count("no answer from the server")
	time.Sleep(time.Second)
	if n := log.count("no answer from the server") - before; n > 4 {
		t.Fatalf("spinning, not backing off: %d tries in 1 s", n)
	}
	var delays []int
	pattern := regexp.MustCompile(`trying again in (\d+) ms`)
	for _, line := range log.all() {
		if m := pattern.FindStringSubmatch(line); m != nil {
			var d int
			json.Unmarshal([]byte(m[1]), &d)
			delays = append(delays, d)
		}
	}
	jittered := false
	for i, d := range delays {
		if d > 1000 {
			t.Fatalf("not capped: %v", delays)
		}
		if i > 0 && d != delays[i-1] {
			jittered = true
		}
	}
	if !jittered {
		t.Fatalf("not jittered: %v", delays)
	}
	s.start() // the same port and database
	until(t, 30*time.Second, "the held ack applied", func() bool {
		record, err := p.Get(background, "down", held.ID, 0)
		return err == nil && record.Status == "done"
	})
	more, err := p.EnqueueMany(background, "down", []any{1, 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range more {
		if record, err := p.Get(background, "down", task.ID, 30*time.Second); err != nil || record.Status != "done" {
			t.Fatalf("%v %+v", err, record)
		}
	}
	if record, _ := p.Get(background, "down", held.ID, 0); record.Attempts != 1 {
		t.Fatalf("attempts %d", record.Attempts)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestASetupMistakeStopsTheWorker(t *testing.T) {
	secret, toml := newToken("worker", "other", "nosuch")
	s := newServer(t, "sqlite", "[queues.squares]\n[queues.other]\n\n"+toml)
	for _, c := range []struct {
		status  int
		token   string
		queue   string
		message string
	}{
		{401, "", "squares", "does not know this token"},
		{403, secret, "squares", "may not use the queue squares"},
		{404, secret, "nosuch", "has no queue nosuch"},
	} {
		log := &lines{}
		w := NewWorker(s.url(), c.queue, func(ctx context.Context, job *Job) (any, error) { return nil, nil },
			WithToken(c.token), WithLogger(logger(log)))
		ctx, cancel := context.WithTimeout(background, 30*time.Second)
		err := w.Run(ctx)
		cancel()
		var katarErr *Error
		if !errors.As(err, &katarErr) || katarErr.Status != c.status || !strings.Contains(err.Error(), c.message) {
			t.Fatalf("%d: got %v", c.status, err)
		}
		if log.count("trying again") > 0 {
			t.Fatalf("%d: retried: %v", c.status, log.all())
		}
	}
}

func TestAQueueDeletedUnderARunningWorkerStopsIt(t *testing.T) {
	s := newServer(t, "sqlite", "")
	s.queue("gone", nil)
	w := NewWorker(s.url(), "gone", func(ctx context.Context, job *Job) (any, error) { return nil, nil },
		WithWait(time.Second), quiet())
	result := make(chan error, 1)
	go func() { result <- w.Run(background) }()
	time.Sleep(300 * time.Millisecond)
	s.call("DELETE", "/v1/queue/gone", nil)
	select {
	case err := <-result:
		var katarErr *Error
		if !errors.As(err, &katarErr) || katarErr.Status != 404 || !strings.Contains(err.Error(), "has no queue gone") {
			t.Fatalf("got %v", err)
		}
	case <-time.After(30 * time.Second):
		w.Stop()
		t.Fatal("the worker did not stop")
	}
}

func TestABadURL(t *testing.T) {
	if _, err := NewProducer("localhost:3000").Enqueue(background, "q", 1, nil); err == nil || !strings.Contains(err.Error(), "http://") {
		t.Fatalf("got %v", err)
	}
	if err := NewWorker("ftp://x", "q", nil).Run(background); err == nil {
		t.Fatal("no error")
	}
}

func logger(l *lines) *log.Logger { return log.New(l, "", 0) }
