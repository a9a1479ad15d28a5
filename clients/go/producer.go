package katar

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Task is a task's record, as the server describes it.
type Task struct {
	ID              string          `json:"_id"`
	Queue           string          `json:"queue"`
	Status          string          `json:"status"` // paused, queued, in progress, done, failed, cancelled
	Priority        int             `json:"priority"`
	Data            json.RawMessage `json:"data"`
	Attempts        int             `json:"attempts"`
	Error           string          `json:"error,omitempty"`
	Result          json.RawMessage `json:"result,omitempty"`
	Progress        json.RawMessage `json:"progress,omitempty"`
	Worker          string          `json:"worker,omitempty"`
	Key             string          `json:"key,omitempty"`
	UniqueKey       string          `json:"unique_key,omitempty"`
	Duplicate       bool            `json:"duplicate,omitempty"`
	CancelRequested bool            `json:"cancel_requested,omitempty"`
	Timeout         *int            `json:"timeout,omitempty"`
	MaxAttempts     *int            `json:"max_attempts,omitempty"`
	CreatedAt       *time.Time      `json:"created_at,omitempty"`
	UpdatedAt       *time.Time      `json:"updated_at,omitempty"`
	RunAt           *time.Time      `json:"run_at,omitempty"`
	LeaseExpiresAt  *time.Time      `json:"lease_expires_at,omitempty"`
	ExpiresAt       *time.Time      `json:"expires_at,omitempty"`
	WaitingFor      []string        `json:"waiting_for,omitempty"`
	// Attributes are its SQS message attributes (a send over the SQS API, or an enqueue
	// with EnqueueOptions.Attributes); nil for other tasks.
	Attributes *MessageAttributes `json:"attributes,omitempty"`
}

// MessageAttributeValue is an SQS message attribute: its type ("String", "Number",
// "Binary", with an optional ".suffix") and its value, StringValue or BinaryValue.
type MessageAttributeValue struct {
	DataType    string `json:"DataType"`
	StringValue string `json:"StringValue,omitempty"`
	BinaryValue []byte `json:"BinaryValue,omitempty"` // base64 on the wire
}

// MessageAttributes are a task's SQS message attributes (up to 10) and system attributes
// (AWSTraceHeader), as SendMessage takes them; the server checks them by SQS's rules.
type MessageAttributes struct {
	MessageAttributes       map[string]MessageAttributeValue `json:"MessageAttributes,omitempty"`
	MessageSystemAttributes map[string]MessageAttributeValue `json:"MessageSystemAttributes,omitempty"`
}

// Decode decodes the task's data into v.
func (t *Task) Decode(v any) error { return json.Unmarshal(t.Data, v) }

// DecodeResult decodes the task's result into v.
func (t *Task) DecodeResult(v any) error { return json.Unmarshal(t.Result, v) }

// Priorities by name, as the server knows them.
const (
	PriorityHigh   = 10
	PriorityNormal = 0
	PriorityLow    = -10
)

// EnqueueOptions are a task's own fields (their zero values leave the server's defaults)
// and how to send the request. The same options apply to every task of an EnqueueMany.
type EnqueueOptions struct {
	Priority    int           // higher runs first: PriorityHigh, PriorityNormal (0), PriorityLow
	Delay       time.Duration // before the task may run (whole milliseconds)
	RunAt       time.Time     // when the task may run, instead of Delay
	Paused      bool          // enqueue it paused: it waits for a resume
	Key         string        // its group (a customer, an account), for key_concurrency and fair
	Timeout     time.Duration // its lease, instead of the queue's timeout
	MaxAttempts *int          // deliveries before it fails for good (0: no limit)
	ExpiresIn   time.Duration // cancelled when not delivered within this
	UniqueKey   string        // no second task with this key while one is waiting or running
	UniqueFor   time.Duration // with UniqueKey: the key stays taken this long after creation
	After       []string      // ids of tasks (of the same queue) to wait for
	// Attributes are SQS message attributes the task carries: an SQS receive returns them.
	Attributes *MessageAttributes

	// IdempotencyKey makes the enqueue safe to repeat: the same key on the same queue within
	// 24 hours creates nothing and answers what the first answered. Default: a fresh key per
	// call, so that the call's own retries never create a task twice.
	IdempotencyKey string
	// Traceparent and Tracestate, the caller's W3C trace context, are sent as headers.
	Traceparent string
	Tracestate  string
}

func (o *EnqueueOptions) fields(data json.RawMessage) map[string]any {
	task := map[string]any{"data": data}
	if o == nil {
		return task
	}
	if o.Priority != 0 {
		task["priority"] = o.Priority
	}
	if o.Delay > 0 {
		task["delay"] = o.Delay.Seconds()
	}
	if !o.RunAt.IsZero() {
		task["run_at"] = o.RunAt.UTC().Format(time.RFC3339Nano)
	}
	if o.Paused {
		task["status"] = "paused"
	}
	if o.Key != "" {
		task["key"] = o.Key
	}
	if o.Timeout > 0 {
		task["timeout"] = o.Timeout.Milliseconds()
	}
	if o.MaxAttempts != nil {
		task["max_attempts"] = *o.MaxAttempts
	}
	if o.ExpiresIn > 0 {
		task["expires_in"] = o.ExpiresIn.Seconds()
	}
	if o.UniqueKey != "" {
		task["unique_key"] = o.UniqueKey
	}
	if o.UniqueFor > 0 {
		task["unique_for"] = o.UniqueFor.Seconds()
	}
	if len(o.After) > 0 {
		task["after"] = o.After
	}
	if o.Attributes != nil {
		task["attributes"] = o.Attributes
	}
	return task
}

// TraceContext is a W3C trace context: the traceparent and tracestate headers' values.
type TraceContext struct {
	Traceparent string `json:"traceparent,omitempty"`
	Tracestate  string `json:"tracestate,omitempty"`
}

// Producer enqueues tasks, reads them and cancels them. It is safe for concurrent use.
type Producer struct {
	connection
	retries    int
	maxBackoff time.Duration
}

// NewProducer is a producer for the server at url (e.g. "http://127.0.0.1:3000"). A bad URL
// makes every call fail with an error that says so.
func NewProducer(url string, opts ...Option) *Producer {
	s := defaults()
	for _, opt := range opts {
		opt(&s)
	}
	return &Producer{connection: newConnection(url, &s), retries: s.retries, maxBackoff: s.maxBackoff}
}

// Enqueue enqueues one task whose data is data (any value encoding/json encodes, or a
// json.RawMessage) and returns its record: the existing task's, Duplicate true, when its
// UniqueKey was taken. opts may be nil.
func (p *Producer) Enqueue(ctx context.Context, queue string, data any, opts *EnqueueOptions) (*Task, error) {
	tasks, err := p.EnqueueMany(ctx, queue, []any{data}, opts)
	if err != nil {
		return nil, err
	}
	return tasks[0], nil
}

// EnqueueMany enqueues one task per element of data in one request, all or none, and returns
// their records in order.
func (p *Producer) EnqueueMany(ctx context.Context, queue string, data []any, opts *EnqueueOptions) ([]*Task, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("katar: EnqueueMany needs at least one task")
	}
	tasks := make([]any, len(data))
	for i, value := range data {
		encoded, err := json.Marshal(value)
		if err != nil {
			return nil, fmt.Errorf("katar: task %d's data is not JSON: %w", i, err)
		}
		tasks[i] = opts.fields(encoded)
	}
	var body any = map[string]any{"tasks": tasks}
	if len(tasks) == 1 {
		body = tasks[0]
	}
	headers := map[string]string{"Idempotency-Key": randomID()}
	if opts != nil {
		if opts.IdempotencyKey != "" {
			headers["Idempotency-Key"] = opts.IdempotencyKey
		}
		if opts.Traceparent != "" {
			headers["traceparent"] = opts.Traceparent
		}
		if opts.Tracestate != "" {
			headers["tracestate"] = opts.Tracestate
		}
	}
	return p.post(ctx, queue, body, headers)
}

func (p *Producer) post(ctx context.Context, queue string, body any, headers map[string]string) ([]*Task, error) {
	if p.err != nil {
		return nil, p.err
	}
	path := "/v1/queue/" + url.PathEscape(queue) + "/tasks"
	for failures := 0; ; {
		a := p.send(ctx, "POST", path, body, headers, time.Minute)
		if a.status == 200 || a.status == 201 {
			var page struct {
				Tasks []*Task `json:"tasks"`
			}
			if err := json.Unmarshal(a.body, &page); err != nil {
				return nil, fmt.Errorf("katar: POST %s answered what is not the JSON expected: %w", path, err)
			}
			return page.Tasks, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err := p.errorOf(a, "POST "+path)
		// The same body with the same key: the server creates the tasks at most once.
		if !err.Transient() || failures >= p.retries {
			return nil, err
		}
		failures++
		if sleep(ctx, backoff(failures, p.maxBackoff)) != nil {
			return nil, ctx.Err()
		}
	}
}

// Get returns the task's record; with wait > 0, it waits up to that long for the task to
// end (done, failed or cancelled).
func (p *Producer) Get(ctx context.Context, queue, id string, wait time.Duration) (*Task, error) {
	path := "/v1/queue/" + url.PathEscape(queue) + "/tasks/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait=" + strconv.FormatFloat(wait.Seconds(), 'f', -1, 64)
	}
	var task Task
	if err := p.call(ctx, "GET", path, nil, &task, wait+30*time.Second); err != nil {
		return nil, err
	}
	return &task, nil
}

// Cancel cancels a task: at once when it is paused or queued; a task in progress gets
// CancelRequested, and its worker hears of it at its next heartbeat (the record then still
// says "in progress"). A task that has ended already: an *Error with Status 409.
func (p *Producer) Cancel(ctx context.Context, queue, id string) (*Task, error) {
	path := "/v1/queue/" + url.PathEscape(queue) + "/tasks/" + url.PathEscape(id)
	var task Task
	if err := p.call(ctx, "PATCH", path, map[string]string{"status": "cancelled"}, &task, 30*time.Second); err != nil {
		return nil, err
	}
	return &task, nil
}

// ListOptions select a page of a queue's tasks.
type ListOptions struct {
	Status string // only tasks with this status
	Limit  int    // at most this many (the server's default when 0)
	After  string // the Next of the previous page
}

// TaskPage is a page of tasks, and the cursor of the next page ("" at the end).
type TaskPage struct {
	Tasks []*Task `json:"tasks"`
	Next  string  `json:"next"`
}

// List returns a page of the queue's tasks, oldest first.
func (p *Producer) List(ctx context.Context, queue string, opts ListOptions) (*TaskPage, error) {
	query := url.Values{}
	if opts.Status != "" {
		query.Set("status", opts.Status)
	}
	if opts.Limit > 0 {
		query.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.After != "" {
		query.Set("after", opts.After)
	}
	path := "/v1/queue/" + url.PathEscape(queue) + "/tasks"
	if len(query) > 0 {
		path += "?" + query.Encode()
	}
	var page TaskPage
	if err := p.call(ctx, "GET", path, nil, &page, 30*time.Second); err != nil {
		return nil, err
	}
	return &page, nil
}
