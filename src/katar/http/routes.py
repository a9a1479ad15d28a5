"""The HTTP interface's route table, as data: for each path template and method, the
handler that answers it, the least role it needs, whether it uses the store, and what the
OpenAPI document says of it.

A leaf of the HTTP layer: the application (katar.http.app) builds its router from this table
and the OpenAPI builder (katar.http.openapi) its document, and neither imports the other. The
table names each handler as an attribute of :class:`Handlers`, the protocol the application
conforms to, so that a mistyped handler name fails the type check, not a request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from katar.core.model import QueueOptions
from katar.core.schedule import ScheduleSpec
from katar.http.auth import Access
from katar.http.request import Request
from katar.http.responses import QueueCreated, Response
from katar.protocol import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    LEASE_HEADER,
    STATUSES,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    Bulk,
    BulkDone,
    Configuration,
    Deliveries,
    Health,
    MoveJobRecord,
    NotifyStatus,
    Patch,
    Poll,
    PushRotate,
    PushSecret,
    PushStatus,
    QueueDeleted,
    Queues,
    RedriveBody,
    Redriven,
    ScheduleDeleted,
    SchedulePause,
    ScheduleRecord,
    Schedules,
    TaskDeleted,
    TaskRecord,
    Tasks,
    Throughput,
    TokenInfo,
    Workers,
)

#: Methods whose requests carry a body the app reads.
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
#: Methods whose routes change something: refused when a browser sends them from another
#: site's page (katar.http.sites).
WRITE_METHODS: Final = BODY_METHODS | {"DELETE"}

JSON: Final = "application/json"


@dataclass(frozen=True)
class Answer:
    """One of an operation's answers: its description and what its body holds (a type of the
    wire model, or None for no body; ``media`` for a body that is not JSON)."""

    description: str
    body: Any = None
    media: str = JSON
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Operation:
    """What the document says of a route's method: written beside its handler and access
    rule in the route table."""

    summary: str
    operation_id: str
    tag: str
    #: The request body's type (a wire model type, or a schema for a body whose form the
    #: type alone does not say); None when the route reads no body.
    body: Any = None
    body_required: bool = False
    #: Answers by status; 4xx and 5xx ones need only a description (their body is an Error).
    answers: Mapping[int, Answer | str]
    parameters: tuple[dict[str, Any], ...] = ()
    writes: bool = False


WAIT_PARAM: Final = {
    "name": "wait",
    "in": "query",
    "description": "Seconds to wait for the task to finish (up to the server's max_wait).",
    "schema": {"type": "number", "minimum": 0},
}
SECONDS_PARAM: Final = {
    "name": "seconds",
    "in": "query",
    "description": "How far back the history goes, in seconds (2 to 600; default 600).",
    "schema": {"type": "number", "minimum": 2, "maximum": 600},
}
_ANY_STATUS: Final = "|".join(STATUSES)
#: The paging of a list of tasks by id: the page's size, and the cursor (``next``).
PAGE_PARAMS: Final = (
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {
        "name": "after",
        "in": "query",
        "description": "The cursor: the next page's tasks come after this id.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
    },
)
LIST_PARAMS: Final = (
    {
        "name": "status",
        "in": "query",
        "description": "One or more statuses, separated by commas; empty or absent: any.",
        "schema": {
            "type": "string",
            "pattern": f"^( *({_ANY_STATUS}) *(, *({_ANY_STATUS}) *)*)?$",
        },
    },
    *PAGE_PARAMS,
)
IDEMPOTENCY_PARAM: Final = {
    "name": IDEMPOTENCY_KEY_HEADER.title(),
    "in": "header",
    "description": (
        "Makes a retry safe: a repeat with the same key on the same queue within 24 hours"
        " creates nothing and answers what the first answered; the same key with another"
        " body is a 422."
    ),
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
}
#: The W3C trace context of an enqueue (protocol section 17): stored on every task it creates
#: that has no ``trace`` of its own, and delivered with it.
TRACE_PARAMS: Final = (
    {
        "name": TRACEPARENT_HEADER,
        "in": "header",
        "description": (
            "The caller's W3C trace context (https://www.w3.org/TR/trace-context/), stored"
            " unchanged on every task the request creates and delivered with it (trace). One"
            " that is not W3C's is ignored, as the W3C says a receiver does: the tasks carry"
            " none, and the request is not refused."
        ),
        "schema": {
            "type": "string",
            "example": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    },
    {
        "name": TRACESTATE_HEADER,
        "in": "header",
        "description": (
            "Vendor trace data that goes with traceparent, stored with it (left out when it"
            " is over 512 characters or not printable ASCII)."
        ),
        "schema": {"type": "string"},
    },
)
#: The lease header of GET /v1/queue/{queue}, as the document names it.
LEASE_HEADERS: Final = {
    "-".join(part.title() for part in LEASE_HEADER.split("-")): {
        "description": "The queue's lease in ms.",
        "schema": {"type": "integer"},
    }
}
#: An enqueue's body: one task or a batch, as the document shows it.
ENQUEUE_BODY: Final = "Enqueue"
#: A PATCH of a queue: some of QueueOptions's keys.
QUEUE_PATCH_BODY: Final = "QueuePatch"


class Handlers(Protocol):
    """The handlers the route table names: one per route's method, each answering a request
    (katar.http.app.App conforms to this protocol, which the type check verifies)."""

    async def healthz(self, request: Request) -> Response: ...
    async def openapi(self, request: Request) -> Response: ...
    async def docs(self, request: Request) -> Response: ...
    async def ui_page(self, request: Request) -> Response: ...
    async def ui_asset(self, request: Request) -> Response: ...
    async def token_info(self, request: Request) -> Response: ...
    async def metrics(self, request: Request) -> Response: ...
    async def get_throughput(self, request: Request) -> Response: ...
    async def list_queues(self, request: Request) -> Response: ...
    async def list_schedules(self, request: Request) -> Response: ...
    async def get_schedule(self, request: Request) -> Response: ...
    async def put_schedule(self, request: Request) -> Response: ...
    async def patch_schedule(self, request: Request) -> Response: ...
    async def delete_schedule(self, request: Request) -> Response: ...
    async def get_configuration(self, request: Request) -> Response: ...
    async def poll(self, request: Request) -> Response: ...
    async def put_queue(self, request: Request) -> Response: ...
    async def patch_queue(self, request: Request) -> Response: ...
    async def delete_queue(self, request: Request) -> Response: ...
    async def push_status(self, request: Request) -> Response: ...
    async def push_secret(self, request: Request) -> Response: ...
    async def rotate_push_secret(self, request: Request) -> Response: ...
    async def notify_status(self, request: Request) -> Response: ...
    async def notify_secret(self, request: Request) -> Response: ...
    async def rotate_notify_secret(self, request: Request) -> Response: ...
    async def enqueue(self, request: Request) -> Response: ...
    async def list_tasks(self, request: Request) -> Response: ...
    async def bulk(self, request: Request) -> Response: ...
    async def redrive(self, request: Request) -> Response: ...
    async def redrive_job(self, request: Request) -> Response: ...
    async def cancel_redrive(self, request: Request) -> Response: ...
    async def workers(self, request: Request) -> Response: ...
    async def children(self, request: Request) -> Response: ...
    async def parents(self, request: Request) -> Response: ...
    async def get_task(self, request: Request) -> Response: ...
    async def patch_task(self, request: Request) -> Response: ...
    async def delete_task(self, request: Request) -> Response: ...
    async def sqs(self, request: Request) -> Response: ...


class Route(NamedTuple):
    """A route's method: its handler, the least role it needs, what the OpenAPI document
    says of it (summary, body and answers, as wire model types), and whether it uses the
    store: if so it may answer 503 (unavailable) and, for a write, 504 (the store's commit
    was cut: outcome unknown); and its success during an outage says the store is back."""

    handler: Callable[[Handlers, Request], Awaitable[Response]]
    access: Access
    doc: Operation
    store: bool = True


A = Answer
Op = Operation

#: (path template, {method: route}); {names} are path segments. Every route states its
#: access rule here (a test walks this table to check them all), and what the OpenAPI
#: document says of it.
ROUTES: Final[tuple[tuple[str, Mapping[str, Route]], ...]] = (
    (
        "/",
        {
            # The SQS-compatible API (katar.sqs): its own authentication (AWS Signature
            # Version 4) and its own answers, in SQS's shapes.
            "POST": Route(
                Handlers.sqs,
                Access.OPEN,
                Op(
                    summary="The Amazon SQS API (AWS JSON 1.0; see docs/sqs.md)",
                    operation_id="sqs",
                    tag="sqs",
                    body={"type": "object"},
                    answers={
                        200: A(
                            "The action's answer, in SQS's shapes.",
                            {"type": "object"},
                            media="application/x-amz-json-1.0",
                        ),
                        400: "An SQS error (its code in the x-amzn-query-error header).",
                        403: "A request not signed by a declared AWS credential.",
                        404: "This server does not answer the SQS API (an app built"
                        " without its front, katar.sqs).",
                    },
                    writes=True,
                ),
            )
        },
    ),
    (
        "/healthz",
        {
            "GET": Route(
                Handlers.healthz,
                Access.OPEN,
                Op(
                    summary="Whether the server can reach its store",
                    operation_id="health",
                    tag="server",
                    answers={
                        200: A("Healthy.", Health),
                        503: "The store is unavailable, or the server is stopping.",
                    },
                ),
            )
        },
    ),
    (
        "/openapi.json",
        {
            "GET": Route(
                Handlers.openapi,
                Access.OPEN,
                Op(
                    summary="This document",
                    operation_id="openapi",
                    tag="server",
                    answers={200: A("The document.", {"type": "object"})},
                ),
                store=False,
            )
        },
    ),
    (
        "/docs",
        {
            "GET": Route(
                Handlers.docs,
                Access.OPEN,
                Op(
                    summary="This document, as a page",
                    operation_id="docs",
                    tag="server",
                    answers={200: A("The page.", media="text/html")},
                ),
                store=False,
            )
        },
    ),
    (
        "/ui",
        {
            "GET": Route(
                Handlers.ui_page,
                Access.OPEN,
                Op(
                    summary="The dashboard (its data comes from this API, with a token)",
                    operation_id="dashboard",
                    tag="server",
                    answers={200: A("The page.", media="text/html")},
                ),
                store=False,
            )
        },
    ),
    (
        "/ui/{asset}",
        {
            "GET": Route(
                Handlers.ui_asset,
                Access.OPEN,
                Op(
                    summary="A file of the dashboard (script, style sheet, image)",
                    operation_id="dashboardAsset",
                    tag="server",
                    answers={
                        200: A("The file.", media="*/*"),
                        304: "The browser's copy (If-None-Match) is current.",
                        404: "No such file.",
                    },
                ),
                store=False,
            )
        },
    ),
    (
        "/v1/token",
        {
            "GET": Route(
                Handlers.token_info,
                Access.WORKER,
                Op(
                    summary="What the caller's token may do: role, queues, name",
                    operation_id="tokenInfo",
                    tag="server",
                    answers={200: A("The token's rights.", TokenInfo)},
                ),
                store=False,
            )
        },
    ),
    (
        "/metrics",
        {
            "GET": Route(
                Handlers.metrics,
                Access.ADMIN,
                Op(
                    summary="Task counts, rates and requests, for Prometheus",
                    operation_id="metrics",
                    tag="server",
                    answers={
                        200: A(
                            "Prometheus's text format 0.0.4.",
                            {"type": "string"},
                            media="text/plain",
                        )
                    },
                ),
            )
        },
    ),
    (
        "/v1/throughput",
        {
            "GET": Route(
                Handlers.get_throughput,
                Access.PRODUCER,
                Op(
                    summary="Tasks enqueued, done and failed per second, per queue,"
                    " over the last minutes",
                    operation_id="throughput",
                    tag="operators",
                    parameters=(SECONDS_PARAM,),
                    answers={
                        200: A(
                            "Samples every interval seconds, oldest first, of the token's queues.",
                            Throughput,
                        ),
                        422: "A bad parameter.",
                    },
                ),
                store=False,
            )
        },
    ),
    (
        "/v1/queues",
        {
            "GET": Route(
                Handlers.list_queues,
                Access.PRODUCER,
                Op(
                    summary="Every queue the token may use, with its options and task counts",
                    operation_id="listQueues",
                    tag="operators",
                    answers={200: A("The queues.", Queues)},
                ),
            )
        },
    ),
    (
        "/v1/schedules",
        {
            "GET": Route(
                Handlers.list_schedules,
                Access.ADMIN,
                Op(
                    summary="Every schedule, with its next ticks and last task",
                    operation_id="listSchedules",
                    tag="schedules",
                    answers={200: A("The schedules.", Schedules)},
                ),
            )
        },
    ),
    (
        "/v1/schedules/{schedule}",
        {
            "GET": Route(
                Handlers.get_schedule,
                Access.ADMIN,
                Op(
                    summary="A schedule, with its next ticks and last task",
                    operation_id="getSchedule",
                    tag="schedules",
                    answers={200: A("The schedule.", ScheduleRecord)},
                ),
            ),
            "PUT": Route(
                Handlers.put_schedule,
                Access.ADMIN,
                Op(
                    summary="Create a schedule or replace it",
                    operation_id="putSchedule",
                    tag="schedules",
                    body=ScheduleSpec,
                    body_required=True,
                    answers={200: A("The schedule.", ScheduleRecord)},
                    writes=True,
                ),
            ),
            "PATCH": Route(
                Handlers.patch_schedule,
                Access.ADMIN,
                Op(
                    summary="Pause or resume a schedule",
                    operation_id="patchSchedule",
                    tag="schedules",
                    body=SchedulePause,
                    body_required=True,
                    answers={200: A("The schedule.", ScheduleRecord)},
                    writes=True,
                ),
            ),
            "DELETE": Route(
                Handlers.delete_schedule,
                Access.ADMIN,
                Op(
                    summary="Remove a schedule (the tasks it made stay)",
                    operation_id="deleteSchedule",
                    tag="schedules",
                    answers={200: A("Removed.", ScheduleDeleted)},
                    writes=True,
                ),
            ),
        },
    ),
    (
        "/v1/queue/{queue}",
        {
            "GET": Route(
                Handlers.get_configuration,
                Access.WORKER,
                Op(
                    summary="The queue's worker configuration",
                    operation_id="getConfiguration",
                    tag="workers",
                    answers={200: A("The configuration.", Configuration, headers=LEASE_HEADERS)},
                ),
                store=False,
            ),
            "POST": Route(
                Handlers.poll,
                Access.WORKER,
                Op(
                    summary="Apply acks, then take tasks (the worker's poll)",
                    operation_id="poll",
                    tag="workers",
                    body=Poll,
                    answers={
                        200: A(
                            "Tasks for this worker, and the tasks it must stop (cancel), if any.",
                            Deliveries,
                        ),
                        204: "Nothing to take, and nothing to stop.",
                        409: "An ack for a task never delivered, or a poll of a push queue"
                        " (the server delivers its tasks); nothing was applied.",
                        429: "The server holds its limit of long polls; retry shortly.",
                    },
                    writes=True,
                ),
            ),
            "PUT": Route(
                Handlers.put_queue,
                Access.ADMIN,
                Op(
                    summary="Create a queue or replace its options",
                    operation_id="putQueue",
                    tag="operators",
                    body=QueueOptions,
                    answers={200: A("The queue.", QueueCreated)},
                    writes=True,
                ),
            ),
            "PATCH": Route(
                Handlers.patch_queue,
                Access.ADMIN,
                Op(
                    summary="Change some of a queue's options, keep the others",
                    operation_id="patchQueue",
                    tag="operators",
                    body=QUEUE_PATCH_BODY,
                    body_required=True,
                    answers={200: A("The queue.", QueueCreated)},
                    writes=True,
                ),
            ),
            "DELETE": Route(
                Handlers.delete_queue,
                Access.ADMIN,
                Op(
                    summary="Remove a queue and its tasks",
                    operation_id="deleteQueue",
                    tag="operators",
                    answers={200: A("Removed.", QueueDeleted)},
                    writes=True,
                ),
            ),
        },
    ),
    (
        "/v1/queue/{queue}/push",
        {
            "GET": Route(
                Handlers.push_status,
                Access.PRODUCER,
                Op(
                    summary="A push queue's endpoint and this server's last pushes to it",
                    operation_id="getPushStatus",
                    tag="operators",
                    answers={
                        200: A("The endpoint and its last answers.", PushStatus),
                        409: "The queue has no push option.",
                    },
                ),
                store=False,
            ),
        },
    ),
    (
        "/v1/queue/{queue}/push/secret",
        {
            "GET": Route(
                Handlers.push_secret,
                Access.ADMIN,
                Op(
                    summary="A push queue's signing secrets (admin only)",
                    operation_id="getPushSecret",
                    tag="operators",
                    answers={
                        200: A("The secrets.", PushSecret),
                        409: "The queue has no push option.",
                    },
                ),
                store=False,
            ),
        },
    ),
    (
        "/v1/queue/{queue}/push/rotate",
        {
            "POST": Route(
                Handlers.rotate_push_secret,
                Access.ADMIN,
                Op(
                    summary="Give a push queue a new secret; the old one signs too for a while",
                    operation_id="rotatePushSecret",
                    tag="operators",
                    body=PushRotate,
                    answers={
                        200: A("The new secret, and until when the old one signs.", PushSecret),
                        409: "The queue has no push option.",
                    },
                    writes=True,
                ),
            ),
        },
    ),
    (
        "/v1/queue/{queue}/notify",
        {
            "GET": Route(
                Handlers.notify_status,
                Access.PRODUCER,
                Op(
                    summary="A queue's completion-webhook endpoint, its outbox and this"
                    " server's last sends to it",
                    operation_id="getNotifyStatus",
                    tag="operators",
                    answers={
                        200: A(
                            "The endpoint, the events pending and the last answers.", NotifyStatus
                        ),
                        409: "The queue has no notify option.",
                    },
                ),
            ),
        },
    ),
    (
        "/v1/queue/{queue}/notify/secret",
        {
            "GET": Route(
                Handlers.notify_secret,
                Access.ADMIN,
                Op(
                    summary="The secrets that sign a queue's completion webhooks (admin only)",
                    operation_id="getNotifySecret",
                    tag="operators",
                    answers={
                        200: A("The secrets.", PushSecret),
                        409: "The queue has no notify option.",
                    },
                ),
                store=False,
            ),
        },
    ),
    (
        "/v1/queue/{queue}/notify/rotate",
        {
            "POST": Route(
                Handlers.rotate_notify_secret,
                Access.ADMIN,
                Op(
                    summary="Give a queue's completion webhooks a new secret; the old one signs"
                    " too for a while",
                    operation_id="rotateNotifySecret",
                    tag="operators",
                    body=PushRotate,
                    answers={
                        200: A("The new secret, and until when the old one signs.", PushSecret),
                        409: "The queue has no notify option.",
                    },
                    writes=True,
                ),
            ),
        },
    ),
    (
        "/v1/queue/{queue}/tasks",
        {
            "POST": Route(
                Handlers.enqueue,
                Access.PRODUCER,
                Op(
                    summary="Enqueue one task or many",
                    operation_id="enqueue",
                    tag="producers",
                    body=ENQUEUE_BODY,
                    body_required=True,
                    parameters=(IDEMPOTENCY_PARAM, *TRACE_PARAMS),
                    answers={
                        201: A("The new tasks.", Tasks),
                        200: A(
                            "Nothing created: each task's unique_key was held (the"
                            " tasks that hold them, each with duplicate true) or its"
                            " debounce_key's waiting task took it (that task, with its"
                            " new data and due time, debounced true).",
                            Tasks,
                        ),
                        503: "The store is unavailable: nothing was enqueued.",
                        504: "The store's connection was lost while it committed"
                        ' (outcome "unknown"): retry with the same Idempotency-Key.',
                    },
                    writes=True,
                ),
            ),
            "GET": Route(
                Handlers.list_tasks,
                Access.PRODUCER,
                Op(
                    summary="List tasks, paged by id",
                    operation_id="listTasks",
                    tag="producers",
                    parameters=LIST_PARAMS,
                    answers={200: A("A page.", Tasks), 422: "A bad parameter."},
                ),
            ),
        },
    ),
    (
        "/v1/queue/{queue}/tasks/bulk",
        {
            "POST": Route(
                Handlers.bulk,
                Access.ADMIN,
                Op(
                    summary="Retry, cancel or delete every task a filter selects",
                    operation_id="bulk",
                    tag="operators",
                    body=Bulk,
                    body_required=True,
                    answers={
                        200: A(
                            "What the filter matched, and what the action changed"
                            " (with dry_run: would change).",
                            BulkDone,
                        ),
                        422: "A bad action or filter.",
                    },
                    writes=True,
                ),
            )
        },
    ),
    (
        "/v1/queue/{queue}/redrive",
        {
            "POST": Route(
                Handlers.redrive,
                Access.ADMIN,
                Op(
                    summary="Move waiting tasks back to where they came from, or to a queue",
                    operation_id="redrive",
                    tag="operators",
                    body=RedriveBody,
                    body_required=False,
                    answers={
                        200: A(
                            "Done: the tasks the filter matched among the queued and failed,"
                            " those moved, and those left for they have no queue to go to.",
                            Redriven,
                        ),
                        202: A("With a rate: the move job, started.", MoveJobRecord),
                        404: "No such queue, or no queue named by to.",
                        409: "A redrive with a rate of this queue runs already.",
                        422: "A bad filter, to or rate.",
                    },
                    writes=True,
                ),
            ),
            "GET": Route(
                Handlers.redrive_job,
                Access.ADMIN,
                Op(
                    summary="The queue's last redrive with a rate",
                    operation_id="getRedrive",
                    tag="operators",
                    answers={
                        200: A("The move job as it stands.", MoveJobRecord),
                        404: "No such queue, or no redrive with a rate of it.",
                    },
                ),
                store=False,
            ),
            "DELETE": Route(
                Handlers.cancel_redrive,
                Access.ADMIN,
                Op(
                    summary="Stop the queue's redrive with a rate (what it moved stays moved)",
                    operation_id="cancelRedrive",
                    tag="operators",
                    answers={
                        200: A("The move job as it ended.", MoveJobRecord),
                        404: "No such queue, or no redrive with a rate of it.",
                    },
                ),
                store=False,
            ),
        },
    ),
    (
        "/v1/workers",
        {
            "GET": Route(
                Handlers.workers,
                Access.PRODUCER,
                Op(
                    summary="The workers seen in the last hour",
                    operation_id="listWorkers",
                    tag="operators",
                    answers={200: A("The workers.", Workers)},
                ),
            )
        },
    ),
    (
        "/v1/queue/{queue}/tasks/{id}/children",
        {
            "GET": Route(
                Handlers.children,
                Access.PRODUCER,
                Op(
                    summary="The tasks that wait or waited for a task (its children)",
                    operation_id="listChildren",
                    tag="producers",
                    parameters=PAGE_PARAMS,
                    answers={
                        200: A(
                            "A page of the tasks, of any queue, that named this one"
                            " in their after, by id; those of queues the token may"
                            " not use are left out.",
                            Tasks,
                        ),
                        404: "No such task in this queue.",
                        422: "A bad parameter.",
                    },
                ),
            )
        },
    ),
    (
        "/v1/queue/{queue}/tasks/{id}/parents",
        {
            "GET": Route(
                Handlers.parents,
                Access.PRODUCER,
                Op(
                    summary="The tasks a task waits or waited for (its parents)",
                    operation_id="listParents",
                    tag="producers",
                    parameters=PAGE_PARAMS,
                    answers={
                        200: A(
                            "A page of the tasks, of any queue, that this one named"
                            " in its after and that are still there, by id; those of"
                            " queues the token may not use are left out.",
                            Tasks,
                        ),
                        404: "No such task in this queue.",
                        422: "A bad parameter.",
                    },
                ),
            )
        },
    ),
    (
        "/v1/queue/{queue}/tasks/{id}",
        {
            "GET": Route(
                Handlers.get_task,
                Access.PRODUCER,
                Op(
                    summary="A task; with wait, once it finishes",
                    operation_id="getTask",
                    tag="producers",
                    parameters=(WAIT_PARAM,),
                    answers={200: A("The task.", TaskRecord), 422: "A bad parameter."},
                ),
            ),
            "PATCH": Route(
                Handlers.patch_task,
                Access.ADMIN,
                Op(
                    summary="Cancel, pause, resume or retry a task (retry with an edit)",
                    operation_id="patchTask",
                    tag="operators",
                    body=Patch,
                    body_required=True,
                    answers={
                        200: A("The task.", TaskRecord),
                        202: A(
                            "A task in progress: its cancel is recorded"
                            " (cancel_requested); it is cancelled at its worker's next"
                            " heartbeat or ack, or when its lease runs out.",
                            TaskRecord,
                        ),
                        409: "The task's status does not allow it (an edit: a task in"
                        " progress or done).",
                        413: "The edit's data is over max_task_bytes.",
                        422: "A bad status or field, or an edit with another status than queued.",
                    },
                    writes=True,
                ),
            ),
            "DELETE": Route(
                Handlers.delete_task,
                Access.ADMIN,
                Op(
                    summary="Remove a task",
                    operation_id="deleteTask",
                    tag="operators",
                    answers={200: A("Removed.", TaskDeleted)},
                    writes=True,
                ),
            ),
        },
    ),
)
