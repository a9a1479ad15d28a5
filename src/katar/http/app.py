"""The HTTP application: routing, bodies, limits, long polls, error mapping.

Written without a framework: a worker's poll is the hot path of the product, and a
framework's routing and request objects cost about half of its throughput on the benchmark
machine (docs/architecture.md). The routes are data (katar.http.routes); the app binds them
to its handlers. It has two entries over one core: :meth:`App.admit` then :meth:`App.respond` for
``katar serve``'s own HTTP/1.1 protocol (katar.http.connection), which hands over whole
requests, and the ASGI callable (katar.http.asgi), for any ASGI server and for in-process
clients. No SQL and no queue rules here: handlers parse, call the engine, and shape the
answer.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast
from urllib.parse import unquote

import msgspec

from katar import ui
from katar._version import __version__
from katar.core import rules
from katar.core.engine import Engine
from katar.core.model import (
    NewTask,
    NotifyOptions,
    PushOptions,
    QueueOptions,
    State,
    Task,
    check_queue_name,
    parse_queue_options,
    public_options,
    trace_context,
)
from katar.core.moves import MoveJob
from katar.core.schedule import Schedule, ScheduleSpec, parse_schedule, task_data
from katar.core.schedule import check_name as check_schedule_name
from katar.errors import (
    Conflict,
    Forbidden,
    KatarError,
    NotFound,
    QueueNotFound,
    ShuttingDown,
    StoreUnavailable,
    TooManyRequests,
    ValidationError,
)
from katar.http import metrics, openapi, parse, throughput
from katar.http.asgi import Asgi, Receive, Scope, Send
from katar.http.auth import ALL_QUEUES, Access, Authenticator, Token
from katar.http.request import Admission, Handler, HangUp, Headers, Request
from katar.http.responses import (
    API_HEADERS,
    JSON_HEADERS,
    LEASE_HEADER,
    NO_CONTENT,
    QueueCreated,
    Response,
    deliveries,
    encode,
    error_response,
    iso_time,
    json_response,
    record_body,
    schedule_record,
    task_record,
    task_records,
)
from katar.http.routes import ROUTES, WRITE_METHODS, Handlers
from katar.http.sites import Hosts, SiteHeaders, cross_site, site_headers
from katar.limits import Limits as Limits
from katar.limits import task_too_large
from katar.logs import log_access
from katar.protocol import (
    IDEMPOTENCY_KEY_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    BulkDone,
    Configuration,
    Health,
    MoveJobRecord,
    NotifyAnswerRecord,
    NotifyStatus,
    PushAnswerRecord,
    PushRotate,
    PushSecret,
    PushStatus,
    QueueDeleted,
    QueueInfo,
    QueueLimits,
    Queues,
    Redriven,
    RoleName,
    ScheduleDeleted,
    Schedules,
    TaskDeleted,
    TokenInfo,
    Workers,
    WorkerSeen,
)

if TYPE_CHECKING:
    from katar.tracing import Tracing

log = logging.getLogger("katar")


class _Bound(NamedTuple):
    """A route's method as an app answers it: the handler, bound to the app, and the least
    role it needs."""

    handler: Handler
    access: Access


#: The route label of requests that match no route.
UNROUTED: Final = "other"
#: The route label of the SQS query protocol's requests sent to a queue's URL.
SQS_QUEUE: Final = "/{account}/{queue}"
#: The route cache (App._route) remembers paths up to this long (the longest route with a
#: queue name of the longest kind is about 300 characters)...
_ROUTE_CACHED_PATH: Final = 512
#: ...and up to this many bytes of them and their parameters, counted as _route_cost: what
#: requests with random paths, authenticated or not, can make the server hold (about 1 MB).
ROUTE_CACHE_BYTES: Final = 1024 * 1024


class App:
    """Katar's HTTP interface over an :class:`~katar.core.engine.Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        limits: Limits | None = None,
        tokens: Iterable[Token] = (),
        startup: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        access_log: bool = False,
        allowed_hosts: Iterable[str] | None = None,
        sqs: Handler | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``allowed_hosts``: on a server without tokens, the Host names answered beside
        loopback names and addresses (katar.http.sites.Hosts); None answers any Host (an app
        called in-process, as tests do; ``katar serve`` always gives a list). ``tracing``:
        the server's spans (katar.tracing), when it exports some."""
        self.engine = engine
        #: The SQS-compatible API's front (katar.sqs), which the server builds: POST /.
        self._sqs = sqs
        #: The spans of enqueues and polls; None (no OTLP endpoint): no work at all.
        self.tracing = tracing
        #: Log a line per answered request (katar.logs.log_access).
        self.access_log = access_log
        #: Store outages, said once each (shared with the engine's background work).
        self.outages = engine.outages
        self.limits = limits or Limits()
        self._max_poll = self.limits.max_poll
        self._startup = startup or engine.open
        self._shutdown = shutdown or engine.close
        self.auth = Authenticator(tokens)
        self._guarded = self.auth.enabled
        #: The Host names answered, on a server without tokens (None: any).
        self.hosts = None if allowed_hosts is None or self._guarded else Hosts(allowed_hosts)
        self.long_polls = 0  # long polls held now (bounded by limits.max_long_polls)
        self._long_polls_of_queue: dict[str, int] = {}  # those of each queue, and token
        self._long_polls_of_token: dict[bytes, int] = {}
        #: The throughput history (GET /v1/throughput), sampled while the app runs: started
        #: and stopped with its lifespan (katar serve: by the server, around serving).
        self.throughput = throughput.Sampler(engine.counters, time.time)
        self._asgi = Asgi(
            self,
            limits=self.limits,
            throughput=self.throughput,
            startup=self._startup,
            shutdown=self._shutdown,
        )
        #: The route table (katar.http.routes), as data.
        self.routes: Final = ROUTES
        #: The routes by their number of segments: (template, shape, each method as this app
        #: answers it), a shape's None standing for a parameter.
        self._by_length: dict[int, list[tuple[str, tuple[str | None, ...], dict[str, _Bound]]]] = {}
        storeless: set[Handler] = set()
        for path, routes in ROUTES:
            methods: dict[str, _Bound] = {}
            for method, route in routes.items():
                # The table names the handler as an attribute of Handlers, which App is
                # type-checked to implement (end of this module): bound here by that name.
                handler: Handler = getattr(self, route.handler.__name__)
                methods[method] = _Bound(handler, route.access)
                if not route.store:
                    storeless.add(handler)
            segments = path.split("/")[1:] if path != "/" else []
            shape = tuple(None if p.startswith("{") else p for p in segments)
            self._by_length.setdefault(len(shape), []).append((path, shape, methods))
        #: The handlers of routes that answer without the store (Route.store): their success
        #: says nothing about an outage's end.
        self._storeless = frozenset(storeless)
        #: The OpenAPI document, as served at /openapi.json.
        self.openapi_json = encode(openapi.document(ROUTES, self.limits))
        self._routed: dict[str, tuple[str, dict[str, _Bound] | None, tuple[str, ...]]] = {}
        self._routed_bytes = 0  # the route cache's size, as _route_cost counts it
        #: Requests answered, by (method, route template, status): for /metrics.
        self.requests: dict[tuple[str, str, int], int] = {}

    # -- entries ---------------------------------------------------------------------------

    def admit(
        self, method: str, path: str, headers: Headers, site: SiteHeaders | None = None
    ) -> Admission:
        """Route a request and check its token, before its body is read: a refused request's
        body is never buffered. ``path`` is the target's path as sent, %-escapes and all:
        it is split into segments before they are decoded, so that an escaped "/" ("%2F")
        is part of a queue's name, not a separator. ``site``: its Host, Origin and
        Sec-Fetch-Site headers, when the caller has them at hand (else they are looked up)."""
        started = time.perf_counter() if self.access_log else None
        template, methods, params = self._route(path)
        if self.hosts is not None or method in WRITE_METHODS:
            refusal = self._refuse_site(method, site or site_headers(headers))
            if refusal is not None:
                return Admission(template, None, params, None, refusal, started)
        if methods is None:
            queue_path = _queue_url_path(path) if self._sqs is not None else None
            if queue_path is not None and method == "POST":
                # The SQS query protocol sends a queue's actions to its URL (katar.sqs): it
                # authenticates them itself, as POST /.
                return Admission(SQS_QUEUE, self.sqs, queue_path, None, None, started, headers)
            error = {"error": f"no route for {path}; see /docs"}
            return Admission(template, None, params, None, json_response(error, 404), started)
        route = methods.get(method)
        if route is None and template == "/":
            # Only the SQS API's POST is answered at /: anything else there has no route.
            error = {"error": f"no route for {method} {path}; see /docs"}
            return Admission(template, None, params, None, json_response(error, 404), started)
        if route is None:
            allowed = ", ".join(methods)
            error = {"error": f"method {method} is not allowed on {path}; allowed: {allowed}"}
            refusal = Response(405, encode(error), [*JSON_HEADERS, (b"allow", allowed.encode())])
            return Admission(template, None, params, None, refusal, started)
        handler, access = route.handler, route.access
        token = None
        if self._guarded and access is not Access.OPEN:
            try:
                token = self.auth.authenticate(headers)
                # The first parameter of a route under /v1/queue/ is the queue the token
                # must allow; a schedule's queue is checked by its handler.
                scoped = params[0] if params and "{queue}" in template else None
                self.auth.authorize(token, access, scoped)
            except KatarError as exc:
                refusal = error_response(exc)
                return Admission(template, None, params, None, refusal, started)
        return Admission(template, handler, params, token, None, started, headers)

    def _refuse_site(self, method: str, site: SiteHeaders) -> Response | None:
        """The answer that refuses a request from a site this server does not serve
        (katar.http.sites): on a server without tokens, a Host it does not answer (DNS
        rebinding); on any server, a browser's request from another site's page to a route
        that changes something."""
        host, origin, fetch_site = site
        if self.hosts is not None and not self.hosts.allows(host):
            shown = (host or b"").decode("latin-1")[:100]
            return error_response(
                Forbidden(
                    f"this server has no tokens and answers only its own host names; "
                    f"{shown!r} is not one of them. Add it to [server] allowed_hosts "
                    "(--allowed-host), or configure tokens",
                    host=shown,
                )
            )
        if (
            (fetch_site is not None or origin is not None)  # else no browser's (cross_site)
            and method in WRITE_METHODS
            and cross_site(fetch_site, origin, host)
        ):
            shown = (origin or b"").decode("latin-1")[:100]
            return error_response(
                Forbidden(
                    "a page of another site may not change anything on this server (the "
                    f"request's Origin is {shown!r}); send it from this server's own pages, "
                    "or from a program that is not a browser",
                    origin=shown,
                )
            )
        return None

    async def respond(
        self,
        method: str,
        path: str,
        admission: Admission,
        query_string: bytes,
        body: bytes,
        hang_up: HangUp,
    ) -> Response:
        """The answer to an admitted request (see :meth:`admit`) whose body has arrived."""
        response = admission.refusal
        if response is None:
            assert admission.handler is not None
            request = Request(
                admission.params, query_string, body, admission.token, hang_up, admission.headers
            )
            try:
                params = admission.params
                if "{queue}" in admission.template and params[0] not in self.engine.queues:
                    # Made on another server a moment ago, perhaps: the engine looks in the
                    # store before the handler answers that there is no such queue.
                    await self.engine.find_queue(params[0])
                response = await admission.handler(request)
            except KatarError as exc:
                response = error_response(exc)
                if response.status >= 500:
                    self._failed(method, path, exc)
            except Exception:
                log.exception("internal error on %s %s", method, path)
                error = {"error": "internal server error; see the server's log"}
                response = json_response(error, 500)
            else:
                if self.outages.since is not None and response.status < 500:
                    self._answered(admission.handler)
        self.count(method, admission.template, response.status, len(response.body), admission)
        return response

    def _answered(self, handler: Handler) -> None:
        """A request answered during an outage: the store is back if the handler used it."""
        if handler not in self._storeless:
            self.outages.up()

    def _failed(self, method: str, path: str, exc: KatarError) -> None:
        """Log a 5xx once: a store outage once for all its requests, a shutdown not at all
        (both are expected 503s), anything else with its traceback (a 500 is a bug)."""
        if isinstance(exc, StoreUnavailable):
            self.outages.down(exc.message)
        elif not isinstance(exc, ShuttingDown):
            log.error("internal error on %s %s: %s", method, path, exc.message, exc_info=exc)

    def count(
        self,
        method: str,
        template: str,
        status: int,
        size: int = -1,
        admission: Admission | None = None,
    ) -> None:
        """Count an answered request, for /metrics; and with the access log on, log it
        (``size``: the body's bytes, -1 if unknown; the time taken from ``admission``)."""
        key = (method, template, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if self.access_log:
            started = admission.started if admission is not None else None
            trace_id = None if admission is None else _trace_id(admission.headers)
            log_access(method, template, status, size, started, trace_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry (katar.http.asgi)."""
        await self._asgi(scope, receive, send)

    def _route(self, path: str) -> tuple[str, dict[str, _Bound] | None, tuple[str, ...]]:
        # Workers poll the same few paths over and over: remember the answers, within a
        # bound in bytes, so that random paths cannot make the server hold more.
        known = self._routed.get(path)
        if known is None:
            known = self._match(path)
            if len(path) <= _ROUTE_CACHED_PATH:
                cost = _route_cost(path, known[2])
                if self._routed_bytes + cost > ROUTE_CACHE_BYTES:
                    self._routed.clear()
                    self._routed_bytes = 0
                self._routed[path] = known
                self._routed_bytes += cost
        return known

    def route_cache_bytes(self) -> int:
        """The bytes the route cache holds, as _route_cost counts them."""
        return self._routed_bytes

    def _match(self, path: str) -> tuple[str, dict[str, _Bound] | None, tuple[str, ...]]:
        parts = path.split("/")[1:]
        if parts and parts[-1] == "":
            parts.pop()  # a trailing slash names the same resource
        if "%" in path:  # decoded once split: "%2F" is a character of a segment
            parts = [unquote(part) for part in parts]
        for template, shape, methods in self._by_length.get(len(parts), ()):
            if all(s is None or s == p for s, p in zip(shape, parts, strict=True)):
                params = tuple(p for s, p in zip(shape, parts, strict=True) if s is None)
                return template, methods, params
        return UNROUTED, None, ()

    # -- worker routes -----------------------------------------------------------------------

    async def get_configuration(self, request: Request) -> Response:
        options = self.engine.options(request.queue)
        # The lease rides in a header: the body is the original protocol's, exactly.
        headers = [*JSON_HEADERS, (LEASE_HEADER, b"%d" % options.timeout)]
        return Response(200, encode(Configuration(options.worker_configuration())), headers)

    async def poll(self, request: Request) -> Response:
        acks, limit, wait, worker = parse.parse_poll(request.body, self.limits.max_wait)
        options = self.engine.queues.get(request.queue)
        if options is not None and options.push is not None:
            raise Conflict(
                f"queue {request.queue!r} is a push queue: the server POSTs its tasks to "
                "its endpoint (push.url), and workers do not poll it; remove the push "
                'option (PATCH {"push": null}) to poll it'
            )
        limit = min(limit, self._max_poll)
        # Tasks to stop (a heartbeat found them cancelled): answered 200 even with no task.
        # Only a heartbeat can name one, so a poll without any leaves it empty: no look at
        # each ack for one here.
        cancel: list[int] = []
        tracing = self.tracing
        if tracing is None:
            if wait <= 0:
                tasks = await self.engine.poll(
                    request.queue, acks, limit, wait, worker, None, cancel
                )
                return self._delivered(tasks, request.token, cancel)
            with self._long_poll(request):
                tasks = await self.engine.poll(
                    request.queue, acks, limit, wait, worker, request.hang_up(), cancel
                )
            return self._delivered(tasks, request.token, cancel)
        # A server that exports spans: the poll's settle span (the acks) and its receive
        # span (the tasks delivered), in the poll's trace context if it has one, else in the
        # tasks'. Here rather than in a coroutine of its own, which would cost each poll
        # one more; a server without tracing runs the poll as above, as it was.
        queue = request.queue
        traceparent, tracestate = _trace_headers(request)
        start = time.time_ns()
        rows: list[Task] = []  # the acked tasks the store hands back: their contexts
        if wait <= 0:
            tasks = await self.engine.poll(queue, acks, limit, wait, worker, None, cancel, rows)
        else:
            with self._long_poll(request):
                tasks = await self.engine.poll(
                    queue, acks, limit, wait, worker, request.hang_up(), cancel, rows
                )
        tracing.poll(queue, acks, tasks, start, traceparent, tracestate, rows)
        return self._delivered(tasks, request.token, cancel)

    def _delivered(self, tasks: list[Task], token: Token | None, cancel: list[int]) -> Response:
        """A poll's answer: its deliveries as the token may see them (no parent of a queue
        outside its scope), the cancels it asked for; 204 when there is neither."""
        if token is not None and not token.all_queues:
            tasks = [shown(task, token) for task in tasks]
        if cancel:
            return Response(200, deliveries(tasks, self.limits.max_answer_bytes, cancel))
        if not tasks:
            return NO_CONTENT
        return Response(200, deliveries(tasks, self.limits.max_answer_bytes))

    @contextlib.contextmanager
    def _long_poll(self, request: Request) -> Iterator[None]:
        """Hold one of the server's long polls (a poll's or an outcome's wait) for the
        request's queue and token while the block runs; TooManyRequests when the server, the
        queue or the token holds its share (Limits.max_long_polls, _per_queue, _per_token)."""
        limits = self.limits
        queue, token = request.queue, request.token
        key = None if token is None else token.sha256
        by_queue, by_token = self._long_polls_of_queue, self._long_polls_of_token
        for held, limit, whose, setting in (
            (self.long_polls, limits.max_long_polls, "this server", "max_long_polls"),
            (
                by_queue.get(queue, 0),
                limits.max_long_polls_per_queue,
                f"the queue {queue!r}",
                "max_long_polls_per_queue",
            ),
            (
                0 if key is None else by_token.get(key, 0),
                limits.max_long_polls_per_token,
                "this token",
                "max_long_polls_per_token",
            ),
        ):
            if held >= limit:
                raise TooManyRequests(
                    f"{whose} holds its limit of {limit} long polls; retry in a moment (the "
                    f"operator can raise [limits] {setting})"
                )
        self.long_polls += 1
        by_queue[queue] = by_queue.get(queue, 0) + 1
        if key is not None:
            by_token[key] = by_token.get(key, 0) + 1
        try:
            yield
        finally:
            self.long_polls -= 1
            _release(by_queue, queue)
            if key is not None:
                _release(by_token, key)

    # -- producer and operator routes ----------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        if self.engine.draining:
            raise ShuttingDown("the server is shutting down")
        try:
            await self.engine.ping()
        except StoreUnavailable as exc:
            self.outages.down(exc.message)
            return json_response(Health("unavailable", error=exc.message), 503)
        return json_response(Health("ok", version=__version__))

    async def openapi(self, request: Request) -> Response:
        return Response(200, self.openapi_json)

    async def docs(self, request: Request) -> Response:
        return Response(200, *_DOCS_PAGE)

    async def ui_page(self, request: Request) -> Response:
        return self._ui(ui.INDEX, request)

    async def ui_asset(self, request: Request) -> Response:
        return self._ui(request.params[0], request)

    def _ui(self, name: str, request: Request) -> Response:
        asset = ui.find(name)
        if asset is None:
            raise NotFound(f"the dashboard has no file {name!r}; open /ui")
        tag = next((v for k, v in request.headers if k == b"if-none-match"), None)
        return Response(*ui.answer(asset, tag))

    async def token_info(self, request: Request) -> Response:
        token = request.token
        if token is None:  # a server without tokens is open: anyone may do anything
            return json_response(TokenInfo("admin", [ALL_QUEUES], "", auth=False))
        return json_response(
            TokenInfo(cast(RoleName, token.role.label), sorted(token.queues), token.name, auth=True)
        )

    async def metrics(self, request: Request) -> Response:
        if request.token is not None and not request.token.all_queues:
            raise Forbidden(
                'the metrics cover every queue: they need an admin token whose queues are ["*"]'
            )
        engine = self.engine
        text = metrics.render(
            await engine.stats(),
            engine.counters,
            self.requests,
            self.long_polls,
            await engine.oldest_queued(),
            engine.clock.now_ms(),
        )
        return Response(200, text, [(b"content-type", metrics.CONTENT_TYPE), *API_HEADERS])

    async def get_throughput(self, request: Request) -> Response:
        seconds = parse.parse_number(
            request.query().get("seconds"),
            "seconds",
            throughput.MAX_SECONDS,
            throughput.INTERVAL,
            throughput.MAX_SECONDS,
        )
        token = request.token
        visible = (lambda queue: True) if token is None else token.may_use
        return json_response(self.throughput.history(seconds, visible))

    async def list_queues(self, request: Request) -> Response:
        stats = await self.engine.stats()
        known = self.engine.queue_options()
        token = request.token
        heads = await self.engine.oldest_queued()
        now = self.engine.clock.now_ms()
        queues = [
            QueueInfo(
                name,
                msgspec.to_builtins(public_options(known[name])),
                counts,
                await self._limits(name, known[name], counts),
                None if name not in heads else max(0, now - heads[name]) / 1000,
                [
                    q
                    for q in self.engine.dead_letter_sources(name)
                    if token is None or token.may_use(q)
                ],
            )
            for name, counts in stats.items()
            if name in known and (token is None or token.may_use(name))
        ]
        return json_response(Queues(queues))

    async def workers(self, request: Request) -> Response:
        token = request.token
        seen = await self.engine.workers(lambda q: token is None or token.may_use(q))
        return json_response(
            Workers(
                [
                    WorkerSeen(name, queues, iso_time(last), busy)
                    for name, queues, last, busy in seen
                ]
            )
        )

    async def _limits(
        self, name: str, options: QueueOptions, counts: Mapping[str, int]
    ) -> QueueLimits | None:
        if not options.limited:
            return None
        state = await self.engine.limit_state(name)
        return QueueLimits(
            in_progress=counts.get("in progress", 0),
            concurrency=options.concurrency,
            tokens=None if state.tokens is None else round(state.tokens, 3),
            keys_at_limit=state.keys_at_limit,
            keys_rate_limited=state.keys_rate_limited,
        )

    async def put_queue(self, request: Request) -> Response:
        name = check_queue_name(request.queue, self.limits.max_queue_name)
        before = self.engine.queues.get(name)
        options = parse_queue_options(parse.parse_object(request.body))
        options = await self.engine.put_queue(name, options)
        return self._queue_answer(name, before, options)

    @staticmethod
    def _queue_answer(name: str, before: QueueOptions | None, options: QueueOptions) -> Response:
        """A queue made or changed: its options without the push secret, unless this
        request made a new one, which its answer shows once."""
        push = options.push
        old = None if before is None or before.push is None else before.push.secret
        new_secret = push is not None and push.secret != old
        notify = options.notify
        old_notify = None if before is None or before.notify is None else before.notify.secret
        new_notify = notify is not None and notify.secret != old_notify
        shown = public_options(options, show_secret=new_secret, show_notify=new_notify)
        return json_response(QueueCreated(name, shown, options.worker_configuration()))

    def _push_options(self, queue: str) -> QueueOptions:
        options = self.engine.options(queue)
        if options.push is None:
            raise Conflict(f"queue {queue!r} has no push option")
        return options

    async def push_status(self, request: Request) -> Response:
        push = self._push_options(request.queue).push
        assert push is not None
        counters = self.engine.counters
        answers = list(counters.push_answers.get(request.queue, ()))
        counts = {
            outcome: count
            for (queue, outcome), count in counters.pushes.items()
            if queue == request.queue
        }
        failed = sum(1 for answer in answers if answer.outcome != "done")
        return json_response(
            PushStatus(
                push.url,
                push.timeout,
                counts,
                round(failed / len(answers), 3) if answers else None,
                [
                    PushAnswerRecord(iso_time(a.at), a.outcome, a.status, a.ms, a.error)  # type: ignore[arg-type]
                    for a in reversed(answers)
                ],
            )
        )

    async def push_secret(self, request: Request) -> Response:
        push = self._push_options(request.queue).push
        assert push is not None
        return self._secret(push)

    def _secret(self, signer: PushOptions | NotifyOptions) -> Response:
        """An admin's view of a push or notify option's secrets."""
        assert signer.secret is not None
        now = self.engine.clock.now_ms()
        previous = signer.previous_secret
        if signer.previous_until is None or signer.previous_until <= now:
            previous = None
        until = None if previous is None else signer.previous_until
        return json_response(
            PushSecret(signer.secret, previous, None if until is None else iso_time(until))
        )

    @staticmethod
    def _rotation(request: Request) -> int:
        """A rotation's grace (ms) from its body."""
        body = request.body.strip() or b"{}"
        try:
            rotate = msgspec.json.decode(body, type=PushRotate)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"a rotation's body: {exc}") from None
        except msgspec.DecodeError:
            raise ValidationError('the body must be JSON, e.g. {"grace": 3600}') from None
        return int(rotate.grace * 1000)

    @staticmethod
    def _rotated(signer: PushOptions | NotifyOptions | None) -> Response:
        assert signer is not None
        assert signer.secret is not None
        until = signer.previous_until
        return json_response(
            PushSecret(
                signer.secret, signer.previous_secret, None if until is None else iso_time(until)
            )
        )

    async def rotate_push_secret(self, request: Request) -> Response:
        self._push_options(request.queue)
        grace = self._rotation(request)
        options = await self.engine.rotate_push_secret(request.queue, grace)
        return self._rotated(options.push)

    def _notify_options(self, queue: str) -> NotifyOptions:
        notify = self.engine.options(queue).notify
        if notify is None:
            raise Conflict(f"queue {queue!r} has no notify option")
        return notify

    async def notify_status(self, request: Request) -> Response:
        notify = self._notify_options(request.queue)
        pending, failing = await self.engine.outbox_pending(request.queue)
        counters = self.engine.counters
        answers = list(counters.notify_answers.get(request.queue, ()))
        counts = {
            outcome: count
            for (queue, outcome), count in counters.notifies.items()
            if queue == request.queue
        }
        failed = sum(1 for answer in answers if answer.outcome != "sent")
        return json_response(
            NotifyStatus(
                notify.url,
                list(notify.events),
                pending,
                failing,
                counts,
                round(failed / len(answers), 3) if answers else None,
                [
                    NotifyAnswerRecord(
                        iso_time(a.at),
                        a.outcome,  # type: ignore[arg-type]
                        a.status,
                        a.ms,
                        str(a.task_id),
                        a.event,
                        a.error,
                    )
                    for a in reversed(answers)
                ],
            )
        )

    async def notify_secret(self, request: Request) -> Response:
        return self._secret(self._notify_options(request.queue))

    async def rotate_notify_secret(self, request: Request) -> Response:
        self._notify_options(request.queue)
        grace = self._rotation(request)
        options = await self.engine.rotate_notify_secret(request.queue, grace)
        return self._rotated(options.notify)

    async def patch_queue(self, request: Request) -> Response:
        self.engine.options(request.queue)  # an unknown queue is a 404 before a bad body
        if not request.body.strip():
            raise ValidationError('send the options to change, e.g. {"paused": true}')
        changes = parse.parse_object(request.body)
        before = self.engine.queues.get(request.queue)
        options = await self.engine.patch_queue(request.queue, changes)
        return self._queue_answer(request.queue, before, options)

    async def delete_queue(self, request: Request) -> Response:
        count = await self.engine.delete_queue(request.queue)
        return json_response(QueueDeleted(request.queue, count))

    # -- schedules ---------------------------------------------------------------------------

    def _may_schedule(self, request: Request, queue: str) -> None:
        """A token limited to some queues manages the schedules of those queues only."""
        token = request.token
        if token is not None and not token.may_use(queue):
            raise Forbidden(f"this token may not use the queue {queue!r}", queue=queue)

    @staticmethod
    def _scope(request: Request) -> Callable[[str], bool] | None:
        """What the token's queues allow: another scope's schedule is answered as unknown."""
        token = request.token
        return None if token is None or token.all_queues else token.may_use

    def _may_make(self, schedule: Schedule | ScheduleSpec) -> None:
        """A schedule's ticks make tasks of its data: held to max_task_bytes, as an enqueue."""
        spec = schedule.spec if isinstance(schedule, Schedule) else schedule
        size = len(task_data(spec))
        if size > self.limits.max_task_bytes:
            raise task_too_large("schedule", size, self.limits.max_task_bytes)

    def _schedule_answer(self, schedule: Schedule) -> Response:
        return json_response(schedule_record(schedule, self.engine.clock.now_ms()))

    async def list_schedules(self, request: Request) -> Response:
        now = self.engine.clock.now_ms()
        listed = await self.engine.list_schedules(self._scope(request))
        return json_response(Schedules([schedule_record(s, now) for s in listed]))

    async def get_schedule(self, request: Request) -> Response:
        schedule = await self.engine.get_schedule(request.params[0], self._scope(request))
        return self._schedule_answer(schedule)

    async def put_schedule(self, request: Request) -> Response:
        name = check_schedule_name(request.params[0])
        spec = parse_schedule(parse.parse_object(request.body))
        self._may_schedule(request, spec.queue)
        self._may_make(spec)
        return self._schedule_answer(
            await self.engine.put_schedule(name, spec, self._scope(request))
        )

    async def patch_schedule(self, request: Request) -> Response:
        scope = self._scope(request)
        current = await self.engine.get_schedule(request.params[0], scope)  # 404 first
        changes = parse.parse_object(request.body)
        if set(changes) != {"paused"} or not isinstance(changes["paused"], bool):
            raise ValidationError(
                'send {"paused": true} to pause the schedule or {"paused": false} to resume it;'
                " PUT replaces its other fields",
                field="paused",
            )
        self._may_make(current)  # stored before the limit held, or under a higher one
        schedule = await self.engine.patch_schedule(request.params[0], changes, scope)
        return self._schedule_answer(schedule)

    async def delete_schedule(self, request: Request) -> Response:
        await self.engine.delete_schedule(request.params[0], self._scope(request))
        return json_response(ScheduleDeleted(request.params[0]))

    async def enqueue(self, request: Request) -> Response:
        self.engine.options(request.queue)  # an unknown queue is a 404 before a bad body
        new = parse.parse_enqueue(
            request.body, self.limits.max_tasks_per_enqueue, self.limits.max_task_bytes
        )
        key = None
        traceparent: bytes | None = None
        tracestate: list[bytes] = []
        for name, value in request.headers:
            if name == _IDEMPOTENCY_KEY:
                if key is not None:
                    raise ValidationError("send at most one Idempotency-Key header")
                key = value.decode("latin-1")
            elif name == _TRACEPARENT:
                # Two traceparents: neither is the caller's for sure; W3C: ignore both.
                traceparent = value if traceparent is None else b""
            elif name == _TRACESTATE:
                tracestate.append(value)  # several headers are one list (RFC 9110)
        if traceparent:
            new = _traced(new, traceparent, tracestate)
        token = request.token
        may_use = None if token is None or token.all_queues else token.may_use
        if self.tracing is None:
            created = await self.engine.enqueue(request.queue, new, key, may_use)
        else:
            start = time.time_ns()
            created = await self.engine.enqueue(request.queue, new, key, may_use)
            state = b",".join(tracestate).decode("latin-1") if tracestate else None
            parent = traceparent.decode("latin-1") if traceparent else None
            self.tracing.send(request.queue, created, start, parent, state)
        # 200 when nothing was created: every task was a duplicate (a unique_key already
        # held) or debounced an existing task (its debounce_key's).
        status = 201 if any(not (t.duplicate or t.debounced) for t in created) else 200
        shown_tasks = [shown(task, token) for task in created]
        made = task_records(shown_tasks, self.limits.max_answer_bytes - 12)  # {"tasks":[...]}
        return Response(status, b'{"tasks":[%b]}' % b",".join(made))

    async def bulk(self, request: Request) -> Response:
        self.engine.options(request.queue)  # an unknown queue is a 404 before a bad body
        action, where, dry_run = parse.parse_bulk(request.body)
        matched, changed = await self.engine.bulk(request.queue, action, where, dry_run)
        return json_response(BulkDone(matched, changed))

    async def redrive(self, request: Request) -> Response:
        self.engine.options(request.queue)  # an unknown queue is a 404 before a bad body
        to, where, rate = parse.parse_redrive(request.body)
        token = request.token
        if to is not None and token is not None and not token.may_use(to):
            raise QueueNotFound(f"no queue {to!r} to redrive to; create it first", queue=to)
        # A token limited to some queues moves tasks to those only (the others stay).
        may_use = None if token is None or token.all_queues else token.may_use
        if rate is None:
            done = await self.engine.redrive(request.queue, to, where, may_use)
            return json_response(Redriven(done.matched, done.moved, done.no_origin))
        job = await self.engine.start_redrive(request.queue, rate, to, where, may_use)
        return json_response(_move_job(job), 202)

    async def redrive_job(self, request: Request) -> Response:
        return json_response(_move_job(await self.engine.move_job(request.queue)))

    async def cancel_redrive(self, request: Request) -> Response:
        return json_response(_move_job(await self.engine.cancel_redrive(request.queue)))

    async def list_tasks(self, request: Request) -> Response:
        query = request.query()
        where = parse.parse_listing(query)
        order = query.get("order", "asc")
        if order not in ("asc", "desc"):
            raise ValidationError(f"order must be asc or desc, not {order[:20]!r}")

        def read(batch: int, after: int) -> Awaitable[list[Task]]:
            return self.engine.list_tasks(
                request.queue, where, batch, after, newest_first=order == "desc"
            )

        return await self._page(query, read, request.token)

    async def children(self, request: Request) -> Response:
        return await self._linked(request, parents=False)

    async def parents(self, request: Request) -> Response:
        return await self._linked(request, parents=True)

    async def _linked(self, request: Request, parents: bool) -> Response:
        query = request.query()
        queue, task_id = request.queue, request.task_id
        token = request.token
        may_use = None if token is None or token.all_queues else token.may_use

        def read(batch: int, after: int) -> Awaitable[list[Task]]:
            return self.engine.linked(queue, task_id, batch, after, may_use, parents)

        return await self._page(query, read, token)

    async def _page(
        self,
        query: Mapping[str, str],
        read: Callable[[int, int], Awaitable[list[Task]]],
        token: Token | None,
    ) -> Response:
        """A page of a list of tasks (katar.protocol.Tasks): up to the query's ``limit``
        records from its cursor ``after``, and the next page's cursor; ``read(n, after)``
        reads the next ``n`` tasks of the list from the cursor. Each as ``token`` may see
        it (:func:`shown`)."""
        limit = int(parse.parse_number(query.get("limit"), "limit", 100, 1, self.limits.max_list))
        after = int(parse.parse_number(query.get("after"), "after", 0, 0, 2**62))
        # The page ends early if its records would be over max_answer_bytes; and it is read
        # in batches of what fits with tasks of max_task_bytes, so that neither the answer nor
        # what is read for it goes far beyond the bound.
        budget = self.limits.max_answer_bytes - 64  # the envelope and the cursor
        task_bytes = self.limits.max_task_bytes
        records: list[bytes] = []
        size = 0
        cursor: int | None = None
        while len(records) < limit:
            batch = min(limit - len(records), max(1, (budget - size) // task_bytes))
            tasks = await read(batch, after)
            for task in tasks:
                task = shown(task, token)
                record = encode(task_record(task))
                if not records and len(record) > budget:  # its parents' results cut
                    record = record_body(task, budget)
                if records and size + len(record) + 1 > budget:
                    cursor = after  # the page is full: the next one starts after the last
                    break
                records.append(record)
                size += len(record) + 1
                after = task.id
            else:
                if len(tasks) < batch:
                    break  # no more tasks
                if len(records) == limit:
                    cursor = after
                continue
            break
        next_page = encode(None if cursor is None else str(cursor))
        body = b'{"tasks":[%b],"next":%b}' % (b",".join(records), next_page)
        return Response(200, body)

    async def get_task(self, request: Request) -> Response:
        wait = parse.parse_number(request.query().get("wait"), "wait", 0, 0, self.limits.max_wait)
        if wait <= 0:
            task = await self.engine.get_task(request.queue, request.task_id)
        else:
            with self._long_poll(request):
                task = await self.engine.get_task(request.queue, request.task_id, wait)
        return Response(200, record_body(shown(task, request.token), self.limits.max_answer_bytes))

    async def patch_task(self, request: Request) -> Response:
        self.engine.options(request.queue)
        status, edit = parse.parse_patch(request.body, self.limits.max_task_bytes)
        task = await self.engine.set_status(request.queue, request.task_id, status, edit)
        task = shown(task, request.token)
        if status == "cancelled" and task.state is State.RUNNING and task.cancel_requested:
            # Accepted, not done: the task is cancelled when its worker hears of it.
            return Response(202, record_body(task, self.limits.max_answer_bytes))
        return Response(200, record_body(task, self.limits.max_answer_bytes))

    async def delete_task(self, request: Request) -> Response:
        task_id = request.task_id
        await self.engine.delete_task(request.queue, task_id)
        return json_response(TaskDeleted(str(task_id)))

    async def sqs(self, request: Request) -> Response:
        if self._sqs is None:
            raise NotFound("this server does not answer the SQS API")
        return await self._sqs(request)


_DOCS_PAGE: Final = openapi.page()

if TYPE_CHECKING:
    # The route table names its handlers as attributes of Handlers, and App binds them by
    # name: the type check verifies that App has each of them, with its signature.
    _APP_HANDLERS: type[Handlers] = App


def shown(task: Task, token: Token | None) -> Task:
    """The task as the holder of ``token`` may read it: without the ids and results of its
    parents of queues the token may not use (rules.without_parents). A task's record and its
    delivery show nothing of another scope's tasks, though a token that may use both queues
    made it wait for them."""
    if token is None or not task.foreign or token.all_queues:
        return task
    hidden = {parent for parent, queue in task.foreign if not token.may_use(queue)}
    return rules.without_parents(task, hidden) if hidden else task


def _release(held: dict[Any, int], key: Any) -> None:
    """One of ``key``'s long polls is over; a key with none is forgotten."""
    count = held[key] - 1
    if count:
        held[key] = count
    else:
        del held[key]


def _queue_url_path(path: str) -> tuple[str, str] | None:
    """The account and queue name of an SQS queue URL's path (``/000000000000/name``), if
    ``path`` is one."""
    parts = path.split("/")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1], unquote(parts[2])


def _route_cost(path: str, params: tuple[str, ...]) -> int:
    """What one entry of the route cache holds, in bytes, about: its path, its parameters
    (their characters, at most 4 bytes each), and the objects around them."""
    return 4 * (len(path) + sum(len(p) for p in params)) + 64 * len(params) + 300


_IDEMPOTENCY_KEY: Final = IDEMPOTENCY_KEY_HEADER.encode()


def _move_job(job: MoveJob) -> MoveJobRecord:
    return MoveJobRecord(
        job.queue,
        job.to,
        job.rate,
        job.state,
        job.matched,
        job.moved,
        job.no_origin,
        job.remaining,
        iso_time(job.started_at),
        None if job.ended_at is None else iso_time(job.ended_at),
        job.error,
        job.id,
        job.runner,
    )


_TRACEPARENT: Final = TRACEPARENT_HEADER.encode()
_TRACESTATE: Final = TRACESTATE_HEADER.encode()
_NAME: Final = operator.itemgetter(0)


def _trace_headers(request: Request) -> tuple[str | None, str | None]:
    """The request's traceparent (None if absent or repeated) and tracestate (its headers
    joined), as given."""
    if _TRACEPARENT not in map(_NAME, request.headers):
        return None, None  # most polls: looked for in C, without a step per header
    traceparent: str | None = None
    tracestate: list[str] = []
    seen = 0
    for name, value in request.headers:
        if name == _TRACEPARENT:
            seen += 1
            traceparent = value.decode("latin-1")
        elif name == _TRACESTATE:
            tracestate.append(value.decode("latin-1"))
    if seen != 1:
        return None, None
    return traceparent, ",".join(tracestate) if tracestate else None


def _trace_id(headers: Headers) -> str | None:
    """The trace id of the request's traceparent, when it has one that is W3C's."""
    for name, value in headers:
        if name == _TRACEPARENT:
            trace = trace_context(value.decode("latin-1"), None)
            return None if trace is None else value[3:35].decode()
    return None


def _traced(tasks: list[NewTask], traceparent: bytes, tracestate: list[bytes]) -> list[NewTask]:
    """The tasks of an enqueue with the request's trace context, each that has none of its
    own (a batch's ``trace``); as they were when the traceparent is not W3C's."""
    state = b",".join(tracestate).decode("latin-1") if tracestate else None
    trace = trace_context(traceparent.decode("latin-1"), state)
    if trace is None:
        return tasks
    return [
        task if task.trace is not None else msgspec.structs.replace(task, trace=trace)
        for task in tasks
    ]
