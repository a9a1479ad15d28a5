// Package katar is the Go client of Katar, the HTTP task-queue server: a Producer that
// enqueues tasks, reads them and cancels them, and a Worker that runs a function on the tasks
// of a queue as docs/workers.md describes (long polls, acks carried on the next poll,
// heartbeats with progress, operators' cancels, backoff with jitter while the server is down,
// a graceful stop). Standard library only; Go 1.19 or newer.
//
//	producer := katar.NewProducer("http://127.0.0.1:3000", katar.WithToken(token))
//	task, err := producer.Enqueue(ctx, "emails", map[string]any{"to": "ada@example.com"}, nil)
//
//	worker := katar.NewWorker("http://127.0.0.1:3000", "emails", send, katar.WithConcurrency(4))
//	err = worker.Run(ctx) // returns once ctx is cancelled and the running tasks are done
package katar

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Error is an answer other than 2xx, or no answer at all (Status 0). Body is the server's
// JSON error ({"error": ..., ...}) when there was one.
type Error struct {
	Status  int
	Message string
	Body    map[string]any
}

func (e *Error) Error() string { return e.Message }

// Transient is true when trying again later may succeed: no answer, a 5xx, a 408 or a 429.
func (e *Error) Transient() bool { return isTransient(e.Status) }

func isTransient(status int) bool {
	return status == 0 || status >= 500 || status == 408 || status == 429
}

// Option configures a Producer or a Worker; each says which it applies to.
type Option func(*settings)

type settings struct {
	token       string
	client      *http.Client
	headers     http.Header
	retries     int
	maxBackoff  time.Duration
	concurrency int
	wait        time.Duration
	name        string
	grace       time.Duration
	logger      *log.Logger
}

func defaults() settings {
	return settings{
		client:      &http.Client{},
		headers:     http.Header{},
		retries:     5,
		maxBackoff:  5 * time.Second,
		concurrency: 1,
		wait:        20 * time.Second,
		grace:       30 * time.Second,
		logger:      log.New(os.Stderr, "", log.LstdFlags),
	}
}

// WithToken sends "Authorization: Bearer <token>" (a token from `katar token`).
func WithToken(token string) Option { return func(s *settings) { s.token = token } }

// WithHTTPClient uses this client for every request (its Timeout should be 0 or above the
// long polls' wait: the client sets a deadline per request).
func WithHTTPClient(client *http.Client) Option { return func(s *settings) { s.client = client } }

// WithHeader adds a header to every request.
func WithHeader(name, value string) Option { return func(s *settings) { s.headers.Add(name, value) } }

// WithRetries is how many times a Producer tries again after no answer, a 5xx, a 408 or a
// 429 (default 5), with the same Idempotency-Key.
func WithRetries(n int) Option { return func(s *settings) { s.retries = n } }

// WithMaxBackoff is the longest pause between two tries (default 5 s).
func WithMaxBackoff(d time.Duration) Option { return func(s *settings) { s.maxBackoff = d } }

// WithConcurrency is how many tasks a Worker runs at once (default 1).
func WithConcurrency(n int) Option { return func(s *settings) { s.concurrency = n } }

// WithWait is how long a Worker's idle poll waits on the server for a task (long poll;
// default 20 s, 0 for none).
func WithWait(d time.Duration) Option { return func(s *settings) { s.wait = d } }

// WithName is the Worker's name, the same on every poll (default host/go-pid-random).
func WithName(name string) Option { return func(s *settings) { s.name = name } }

// WithGrace is how long a stopping Worker lets its running tasks finish; past it their
// contexts are cancelled and they are abandoned (delivered again when their lease runs out).
// Default 30 s.
func WithGrace(d time.Duration) Option { return func(s *settings) { s.grace = d } }

// WithLogger is where a Worker says what it does (ready, backoff, cancels, rejected acks);
// nil for nothing. Default: standard error.
func WithLogger(logger *log.Logger) Option {
	return func(s *settings) {
		if logger == nil {
			logger = log.New(io.Discard, "", 0)
		}
		s.logger = logger
	}
}

// connection: how to reach the server.
type connection struct {
	base    string
	err     error // a bad URL: every call returns it
	client  *http.Client
	headers http.Header
}

func newConnection(base string, s *settings) connection {
	c := connection{base: strings.TrimRight(base, "/"), client: s.client, headers: http.Header{}}
	parsed, err := url.Parse(base)
	if err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		c.err = fmt.Errorf("katar: the URL must be http:// or https://, not %q", base)
	}
	c.headers.Set("Content-Type", "application/json")
	c.headers.Set("User-Agent", "katar-go")
	for name, values := range s.headers {
		c.headers[name] = values
	}
	if s.token != "" {
		c.headers.Set("Authorization", "Bearer "+s.token)
	}
	return c
}

// answer: what one request brought back; status 0 means no answer.
type answer struct {
	status  int
	body    []byte
	text    string // the body, or why there was no answer
	headers http.Header
}

func (a answer) object() map[string]any {
	var body map[string]any
	if json.Unmarshal(a.body, &body) != nil {
		return nil
	}
	return body
}

// send makes one request. It never fails for an HTTP status: status 0 means no answer.
func (c connection) send(ctx context.Context, method, path string, body any, headers map[string]string, timeout time.Duration) answer {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var reader io.Reader
	if body != nil {
		encoded, err := json.Marshal(body)
		if err != nil {
			return answer{text: "katar: the request's body is not JSON: " + err.Error()}
		}
		reader = bytes.NewReader(encoded)
	}
	request, err := http.NewRequestWithContext(ctx, method, c.base+path, reader)
	if err != nil {
		return answer{text: err.Error()}
	}
	for name, values := range c.headers {
		request.Header[name] = values
	}
	for name, value := range headers {
		request.Header.Set(name, value)
	}
	response, err := c.client.Do(request)
	if err != nil {
		if ctx.Err() != nil {
			return answer{text: "the request was cut short: " + ctx.Err().Error()}
		}
		return answer{text: err.Error()}
	}
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	if err != nil {
		return answer{text: "the answer was cut short: " + err.Error()}
	}
	return answer{status: response.StatusCode, body: data, text: string(data), headers: response.Header}
}

// errorOf is the error an answer means, naming the request.
func (c connection) errorOf(a answer, where string) *Error {
	if a.status == 0 {
		return &Error{Message: fmt.Sprintf("no answer from the server at %s (%s): %s", c.base, where, a.text)}
	}
	body := a.object()
	message := strings.TrimSpace(a.text)
	if text, ok := body["error"].(string); ok {
		message = text
	}
	if message == "" {
		message = http.StatusText(a.status)
	}
	return &Error{Status: a.status, Message: fmt.Sprintf("%s: %d %s", where, a.status, message), Body: body}
}

// call makes one request and decodes a 2xx answer into out (when not nil).
func (c connection) call(ctx context.Context, method, path string, body any, out any, timeout time.Duration) error {
	if c.err != nil {
		return c.err
	}
	a := c.send(ctx, method, path, body, nil, timeout)
	if a.status < 200 || a.status >= 300 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.errorOf(a, method+" "+path)
	}
	if out == nil || len(a.body) == 0 {
		return nil
	}
	if err := json.Unmarshal(a.body, out); err != nil {
		return fmt.Errorf("katar: %s %s answered what is not the JSON expected: %w", method, path, err)
	}
	return nil
}

var (
	random     = rand.New(rand.NewSource(time.Now().UnixNano()))
	randomLock sync.Mutex
)

// backoff is the pause before try number failures (1, 2, ...): 250 ms doubled each time, at
// most limit, times a random factor between 0.5 and 1 (so that many clients restarting
// together do not retry in step).
func backoff(failures int, limit time.Duration) time.Duration {
	if failures < 1 {
		failures = 1
	}
	if failures > 20 {
		failures = 20
	}
	base := 250 * time.Millisecond << (failures - 1)
	if base > limit {
		base = limit
	}
	randomLock.Lock()
	factor := 0.5 + random.Float64()/2
	randomLock.Unlock()
	return time.Duration(float64(base) * factor)
}

// sleep waits d, or until ctx is done (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// randomID is a random (version 4) UUID, from the operating system's generator.
func randomID() string {
	b := make([]byte, 16)
	if _, err := cryptorand.Read(b); err != nil {
		randomLock.Lock()
		random.Read(b)
		randomLock.Unlock()
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
