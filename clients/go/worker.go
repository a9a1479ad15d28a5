package katar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Job is a task delivered to a Worker's handler.
type Job struct {
	ID           string          `json:"_id"`
	Data         json.RawMessage `json:"data"`
	Attempt      int             `json:"attempt"`           // 1 for the first delivery, 2 for the next...
	Timeout      int             `json:"timeout,omitempty"` // the task's own lease in ms, when it has one
	After        json.RawMessage `json:"after,omitempty"`   // the results of the tasks it waited for
	Schedule     string          `json:"schedule,omitempty"`
	ScheduledFor string          `json:"scheduled_for,omitempty"`
	// Trace is the trace context the task was enqueued with, when the server delivers one
	// (protocol section 17): hand it to your tracer to link the handler's span.
	Trace *TraceContext `json:"trace,omitempty"`

	progress  atomic.Value // json.RawMessage
	cancelled atomic.Bool
}

// Decode decodes the task's data into v.
func (j *Job) Decode(v any) error { return json.Unmarshal(j.Data, v) }

// Progress reports the task's progress (any value encoding/json encodes); the next heartbeat
// carries the latest, and producers see it in the task's record. Safe from any goroutine.
func (j *Job) Progress(value any) error {
	encoded, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("katar: the progress is not JSON: %w", err)
	}
	j.progress.Store(json.RawMessage(encoded))
	return nil
}

// Cancelled is true once an operator has cancelled the task (its context is then cancelled
// too): nothing the handler returns is sent any more.
func (j *Job) Cancelled() bool { return j.cancelled.Load() }

// Handler runs one task. ctx is cancelled when an operator cancels the task, or when the
// worker stops and its grace period is over. The result (any value encoding/json encodes) is
// the task's result; an error fails the task with its text (see Retry and Fail).
type Handler func(ctx context.Context, job *Job) (any, error)

type outcomeError struct {
	err   error
	retry bool
}

func (e *outcomeError) Error() string { return e.err.Error() }
func (e *outcomeError) Unwrap() error { return e.err }

// Retry wraps a handler's error: the task failed; try it again later, while attempts remain.
func Retry(err error) error { return &outcomeError{err: err, retry: true} }

// Fail wraps a handler's error: the task failed for good; do not try it again. Any other
// error leaves that to the queue's retry_failed option.
func Fail(err error) error { return &outcomeError{err: err, retry: false} }

// Worker runs a Handler on the tasks of a queue; see Run.
type Worker struct {
	connection
	queue       string
	handler     Handler
	concurrency int
	wait        time.Duration
	name        string
	grace       time.Duration
	maxBackoff  time.Duration
	log         *log.Logger

	stopOnce sync.Once
	stopCh   chan struct{}
}

// NewWorker is a worker for the tasks of queue on the server at url.
func NewWorker(url, queue string, handler Handler, opts ...Option) *Worker {
	s := defaults()
	for _, opt := range opts {
		opt(&s)
	}
	if s.concurrency < 1 {
		s.concurrency = 1
	}
	if s.name == "" {
		host, _ := os.Hostname()
		s.name = fmt.Sprintf("%s/go-%d-%s", host, os.Getpid(), randomID()[:6])
	}
	return &Worker{
		connection:  newConnection(url, &s),
		queue:       queue,
		handler:     handler,
		concurrency: s.concurrency,
		wait:        s.wait,
		name:        s.name,
		grace:       s.grace,
		maxBackoff:  s.maxBackoff,
		log:         s.logger,
		stopCh:      make(chan struct{}),
	}
}

// Name is the worker's name, sent on every poll.
func (w *Worker) Name() string { return w.name }

// Stop stops the worker as a cancelled Run context does. Safe from any goroutine.
func (w *Worker) Stop() { w.stopOnce.Do(func() { close(w.stopCh) }) }

// Ack is a worker's report on a delivered task.
type ack struct {
	ID       string          `json:"_id"`
	Status   string          `json:"status"`
	Attempt  int             `json:"attempt"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	Retry    *bool           `json:"retry,omitempty"`
	Progress json.RawMessage `json:"progress,omitempty"`
}

type running struct {
	job    *Job
	lease  time.Duration
	beatAt time.Time
	cancel context.CancelFunc
}

type finished struct {
	entry *running
	ack   ack
}

const longPollMargin = 30 * time.Second // beyond the wait before a poll counts as unanswered

// Run runs the worker until ctx is cancelled (or Stop is called), then stops gracefully: it
// takes no more tasks, cuts a long poll in flight short, lets the running tasks finish
// (within the grace period), sends their acks and returns nil.
//
// Up to the concurrency's tasks run at once, taken in batches; an idle worker long-polls;
// finished tasks' acks ride on the next poll; a task that runs longer than a third of its
// lease gets a heartbeat, with its latest progress; an operator's cancel cancels the task's
// context. No answer (or a 5xx, 408, 429) is retried with capped exponential backoff and
// jitter, without losing an ack. A setup mistake (401, 403, or 404 for the queue) returns an
// *Error that says which: retrying cannot help.
func (w *Worker) Run(ctx context.Context) error {
	if w.err != nil {
		return w.err
	}
	stopping, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-w.stopCh:
			stop()
		case <-stopping.Done():
		}
	}()
	r := &run{Worker: w, stopping: stopping, running: map[string]*running{}, finished: make(chan finished, w.concurrency), lease: time.Minute, interval: 30 * time.Second}
	return r.loop()
}

// run: the state of one Run, owned by its goroutine.
type run struct {
	*Worker
	stopping context.Context // done once the worker is to stop
	deadline time.Time       // when the grace period ends (zero until stopping)
	running  map[string]*running
	finished chan finished
	acks     []ack
	lease    time.Duration
	interval time.Duration
	failures int
}

func (r *run) isStopping() bool {
	if r.stopping.Err() == nil {
		return false
	}
	if r.deadline.IsZero() {
		r.deadline = time.Now().Add(r.grace)
	}
	return true
}

func (r *run) loop() error {
	if r.isStopping() {
		return nil
	}
	if ok, err := r.readConfiguration(); !ok {
		return err
	}
	r.log.Printf("katar worker %s ready on %s: %d task(s) at once, lease %d ms", r.name, r.queue, r.concurrency, r.lease.Milliseconds())
	path := "/v1/queue/" + url.PathEscape(r.queue)
	// After no answer the last poll may have claimed tasks (they come back when their lease
	// runs out): until an answer comes, its acks are sent again with "max": 0, so that
	// nothing is claimed twice. A lost poll that carried no ack is simply sent again.
	resending := false
	for {
		r.collect()
		now := time.Now()
		stopping := r.isStopping()
		if stopping {
			if len(r.running) > 0 && !now.Before(r.deadline) {
				r.abandon()
			}
			if len(r.running) == 0 && len(r.acks) == 0 {
				return nil
			}
		}
		var beats []*running
		for _, entry := range r.running {
			if !entry.job.Cancelled() && now.Sub(entry.beatAt) >= entry.lease/3 {
				beats = append(beats, entry)
			}
		}
		free := r.concurrency - len(r.running)
		if stopping || resending {
			free = 0
		}
		if len(r.acks) == 0 && len(beats) == 0 && free == 0 {
			pause := minDuration(r.untilNextBeat(now), time.Second)
			if stopping {
				pause = minDuration(pause, time.Until(r.deadline))
			}
			r.nap(pause)
			continue
		}
		// Long-poll only while nothing runs: a long poll in flight holds back the acks of
		// tasks that finish meanwhile, and the running tasks' heartbeats, until answered.
		var wait time.Duration
		requestCtx := context.Background()
		if len(r.running) == 0 && !stopping && !resending {
			wait = r.wait
			requestCtx = r.stopping // a stop cuts the long poll short
		}
		sentAcks := r.acks
		sent := append([]ack{}, sentAcks...)
		for _, entry := range beats {
			beat := ack{ID: entry.job.ID, Status: "in progress", Attempt: entry.job.Attempt}
			if progress, ok := entry.job.progress.Load().(json.RawMessage); ok {
				beat.Progress = progress
			}
			sent = append(sent, beat)
		}
		body := map[string]any{"tasks": sent, "max": free, "wait": wait.Seconds(), "worker": r.name}
		a := r.send(requestCtx, "POST", path, body, nil, wait+longPollMargin)
		if a.status == 0 && requestCtx.Err() != nil {
			resending = resending || len(sentAcks) > 0 // cut short by a stop: resend its acks
			continue
		}
		if isTransient(a.status) {
			resending = resending || len(sentAcks) > 0 // keep the acks; "max": 0 until answered
			if stopping && r.failures >= 5 {
				// Their tasks are not lost: their leases run out and they are delivered again.
				r.log.Printf("stopping without sending %d ack(s): no answer from %s", len(r.acks), r.base)
				r.abandon()
				return nil
			}
			r.backOff(a)
			continue
		}
		if a.status != 200 && a.status != 204 {
			// One faulty ack: the answer's "ack" is its index in the "tasks" sent, and nothing
			// of the request was applied. Drop it (a heartbeat comes again) and send the
			// others. A 404 without "ack" means no queue: a setup mistake, as 401 and 403.
			index := -1
			if value, ok := a.object()["ack"].(float64); ok {
				index = int(value)
			}
			if index < 0 || index >= len(sent) {
				return r.fatal(a)
			}
			r.log.Printf("the server rejected ack %d (%d): %s", index, a.status, a.text)
			if index < len(sentAcks) {
				r.acks = append(append([]ack{}, r.acks[:index]...), r.acks[index+1:]...)
			} else {
				beats[index-len(sentAcks)].beatAt = time.Now() // that heartbeat: not before the next
			}
			continue
		}
		r.failures = 0
		resending = false
		r.acks = append([]ack{}, r.acks[len(sentAcks):]...) // answered; new ones may have come
		for _, entry := range beats {
			entry.beatAt = now
		}
		var answer struct {
			Tasks  []*Job   `json:"tasks"`
			Cancel []string `json:"cancel"`
		}
		if a.status == 200 {
			if err := json.Unmarshal(a.body, &answer); err != nil {
				r.log.Printf("the server's answer is not the JSON expected: %v", err)
			}
		}
		for _, id := range answer.Cancel {
			if entry, ok := r.running[id]; ok {
				entry.job.cancelled.Store(true)
				entry.cancel()
			}
			r.log.Printf("task %s was cancelled by an operator", id)
		}
		for _, job := range answer.Tasks {
			r.start(job)
		}
		if len(answer.Tasks) == 0 && len(r.running) > 0 && len(r.acks) == 0 && !stopping {
			r.nap(minDuration(r.untilNextBeat(time.Now()), r.interval)) // busy, nothing new
		}
	}
}

// readConfiguration reads the queue's interval and lease; false when stopped meanwhile (with
// nil) or on a setup mistake (with its error).
func (r *run) readConfiguration() (bool, error) {
	path := "/v1/queue/" + url.PathEscape(r.queue)
	for {
		a := r.send(r.stopping, "GET", path, nil, nil, 30*time.Second)
		if a.status == 200 {
			if lease, err := strconv.Atoi(a.headers.Get("Katar-Lease-Timeout")); err == nil && lease > 0 {
				r.lease = time.Duration(lease) * time.Millisecond
			}
			var body struct {
				Configuration struct {
					Interval *int `json:"interval"`
				} `json:"configuration"`
			}
			if json.Unmarshal(a.body, &body) == nil && body.Configuration.Interval != nil {
				r.interval = time.Duration(*body.Configuration.Interval) * time.Millisecond
			}
			r.failures = 0
			return true, nil
		}
		if r.isStopping() {
			return false, nil
		}
		if !isTransient(a.status) {
			return false, r.fatal(a)
		}
		r.backOff(a)
		if r.isStopping() {
			return false, nil
		}
	}
}

func (r *run) start(job *Job) {
	if job.Attempt < 1 {
		job.Attempt = 1
	}
	lease := r.lease
	if job.Timeout > 0 {
		lease = time.Duration(job.Timeout) * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	entry := &running{job: job, lease: lease, beatAt: time.Now(), cancel: cancel}
	r.running[job.ID] = entry
	go func() {
		defer cancel()
		result, err := r.call(ctx, job)
		a := outcome(job, result, err)
		if a.Status == "failed" && ctx.Err() == nil {
			r.log.Printf("task %s failed (attempt %d): %s", job.ID, job.Attempt, a.Error)
		}
		r.finished <- finished{entry: entry, ack: a}
	}()
}

// call runs the handler, turning a panic into an error.
func (r *run) call(ctx context.Context, job *Job) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return r.handler(ctx, job)
}

func outcome(job *Job, result any, err error) ack {
	if err == nil {
		encoded, jsonErr := json.Marshal(result)
		if jsonErr == nil {
			return ack{ID: job.ID, Status: "done", Attempt: job.Attempt, Result: encoded}
		}
		err = Fail(fmt.Errorf("the handler's result is not JSON: %w", jsonErr))
	}
	// The server refuses NUL in text: an odd message must not get the ack refused.
	message := err.Error()
	clean := make([]rune, 0, len(message))
	for _, c := range message {
		if c == 0 {
			clean = append(clean, []rune(`\x00`)...)
		} else {
			clean = append(clean, c)
		}
	}
	if message == "" {
		clean = []rune("failed")
	}
	a := ack{ID: job.ID, Status: "failed", Attempt: job.Attempt, Error: string(clean)}
	var o *outcomeError
	if errors.As(err, &o) {
		retry := o.retry
		a.Retry = &retry
	}
	return a
}

// collect takes in the tasks finished meanwhile.
func (r *run) collect() {
	for {
		select {
		case f := <-r.finished:
			r.done(f)
		default:
			return
		}
	}
}

func (r *run) done(f finished) {
	// An abandoned or cancelled task gets no ack: the server has ended it, or will deliver
	// it again.
	if r.running[f.entry.job.ID] != f.entry {
		return
	}
	delete(r.running, f.entry.job.ID)
	if !f.entry.job.Cancelled() {
		r.acks = append(r.acks, f.ack)
	}
}

// nap sleeps up to d: a finished task or a stop ends it sooner.
func (r *run) nap(d time.Duration) {
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	stop := r.stopping.Done()
	if !r.deadline.IsZero() {
		stop = nil // already stopping: only a finished task or the time wakes it
	}
	select {
	case f := <-r.finished:
		r.done(f)
	case <-timer.C:
	case <-stop:
	}
}

func (r *run) untilNextBeat(now time.Time) time.Duration {
	next := time.Hour
	for _, entry := range r.running {
		if !entry.job.Cancelled() {
			next = minDuration(next, entry.beatAt.Add(entry.lease/3).Sub(now))
		}
	}
	if next < 0 {
		return 0
	}
	return next
}

// abandon: past the grace period, cancel the handlers' contexts and forget their tasks.
func (r *run) abandon() {
	if len(r.running) == 0 {
		return
	}
	r.log.Printf("grace period over: abandoning %d task(s); the server delivers them again when their lease runs out", len(r.running))
	for id, entry := range r.running {
		entry.cancel()
		delete(r.running, id)
	}
}

func (r *run) backOff(a answer) {
	r.failures++
	delay := backoff(r.failures, r.maxBackoff)
	why := a.text
	if a.status != 0 {
		why = fmt.Sprintf("%d %s", a.status, a.text)
	}
	r.log.Printf("no answer from the server (%s) at %s; trying again in %d ms", why, r.base, delay.Milliseconds())
	r.nap(delay)
}

func (r *run) fatal(a answer) error {
	reasons := map[int]string{
		401: "the server does not know this token: give the worker a valid one",
		403: "this token may not use the queue " + r.queue,
		404: "the server has no queue " + r.queue + ": create it, or fix the name",
	}
	reason, ok := reasons[a.status]
	if !ok {
		reason = "the server rejected the request"
	}
	for id, entry := range r.running {
		entry.cancel()
		delete(r.running, id)
	}
	return &Error{Status: a.status, Message: fmt.Sprintf("%s (%d %s)", reason, a.status, a.text), Body: a.object()}
}

func minDuration(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
