"""The SQS API's actions over the engine's public operations (docs/sqs.md has the mapping).

A message is a task: its body is the task's ``data`` as a JSON string (a native task whose
data is not a string is received with its compact JSON as the body); ReceiveMessage is a
poll whose leases are the visibility timeout; DeleteMessage is a "done" ack of the delivery
its receipt handle names; ChangeMessageVisibility is a heartbeat that sets the lease's end
(0 gives the task back to the queue, not counted as a failure). A queue's SQS attributes
that Katar has no option for (DelaySeconds, ReceiveMessageWaitTimeSeconds,
MaximumMessageSize, MessageRetentionPeriod, Policy) and its tags are kept in the queue's
``configuration``, under ``"sqs"``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import msgspec

from katar.attributes import attributes_size
from katar.auth import Access, AwsCredential, Role
from katar.core import rules
from katar.core.engine import Engine
from katar.core.model import NewTask, QueueOptions, State, Task, TaskFilter, parse_queue_options
from katar.core.moves import MoveJob
from katar.errors import Conflict, NotFound
from katar.limits import Limits
from katar.protocol import Ack
from katar.sqs import errors as sqs_errors
from katar.sqs import trace
from katar.sqs.digest import (
    check_attributes,
    check_body,
    md5_hex,
    md5_of_attributes,
)
from katar.sqs.errors import SqsError, invalid, no_queue
from katar.sqs.handles import Handles

if TYPE_CHECKING:
    from katar.tracing import Tracing

#: A queue's name as SQS allows it: 1 to 80 letters, digits, "-" and "_" (".fifo" after,
#: for a FIFO queue).
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
_BATCH_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
#: A MessageGroupId's and a MessageDeduplicationId's characters: alphanumeric and punctuation.
_DEDUPLICATION_ID: Final = re.compile(r"[!-~]{1,128}")
MAX_BATCH: Final = 10
MAX_MESSAGE_BYTES: Final = 262_144
MAX_WAIT_SECONDS: Final = 20
MAX_VISIBILITY: Final = 43_200  # 12 hours, in seconds
MAX_DELAY: Final = 900

#: The attributes a queue has, with SQS's defaults, and the bounds of those that are numbers.
_DEFAULTS: Final = {
    "DelaySeconds": "0",
    "MaximumMessageSize": "262144",
    "MessageRetentionPeriod": "345600",
    "ReceiveMessageWaitTimeSeconds": "0",
}
_BOUNDS: Final = {
    "DelaySeconds": (0, MAX_DELAY),
    "MaximumMessageSize": (1024, MAX_MESSAGE_BYTES),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, MAX_WAIT_SECONDS),
    "VisibilityTimeout": (0, MAX_VISIBILITY),
}
_SETTABLE: Final = frozenset({*_BOUNDS, "Policy", "SqsManagedSseEnabled"})
#: The redrive attributes: RedrivePolicy is the queue's ``dead_letter`` and ``max_attempts``;
#: RedriveAllowPolicy is kept and enforced when a queue names this one as its target.
_REDRIVE: Final = frozenset({"RedrivePolicy", "RedriveAllowPolicy"})
MAX_RECEIVE_COUNT: Final = 1000
#: The most queues a RedriveAllowPolicy's byQueue may name (SQS: 10).
MAX_ALLOWED_SOURCES: Final = 10
#: The most messages a second a message move task may move (SQS: 500).
MAX_MOVE_RATE: Final = 500
#: A message move task without MaxNumberOfMessagesPerSecond moves as fast as the store
#: takes them, in the background: the engine's rate for "as fast as it can".
_FASTEST: Final = 1_000_000.0
_ARN: Final = re.compile(r"arn:aws[a-z-]*:sqs:[a-z0-9-]*:[0-9]{1,12}:(.+)")
#: Accepted on a standard queue and answered as SQS does, with no effect in Katar.
_ACCEPTED: Final = frozenset({"KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds"})
#: A FIFO queue's attributes, their values and defaults (the first of each).
_FIFO: Final = {
    "FifoQueue": ("true",),
    "ContentBasedDeduplication": ("false", "true"),
    "DeduplicationScope": ("queue", "messageGroup"),
    "FifoThroughputLimit": ("perQueue", "perMessageGroupId"),
}
#: The actions AddPermission may grant another account (SQS's shared-queue actions); the
#: others only the queue's owner may call.
_SHARED_ACTIONS: Final = frozenset(
    {
        "*",
        "ChangeMessageVisibility",
        "DeleteMessage",
        "GetQueueAttributes",
        "GetQueueUrl",
        "ListDeadLetterSourceQueues",
        "PurgeQueue",
        "ReceiveMessage",
        "SendMessage",
    }
)
#: SQS's limits on a queue's policy: actions per statement, statements, principals.
MAX_POLICY_ACTIONS: Final = 7
MAX_POLICY_STATEMENTS: Final = 20
MAX_POLICY_PRINCIPALS: Final = 50
#: A permission's Label (a statement's Sid): 1 to 80 letters, digits, "-" and "_".
_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
_ACCOUNT_ID: Final = re.compile(r"[0-9]{12}")
#: How long a FIFO queue remembers a message's deduplication id (SQS: 5 minutes).
DEDUPLICATION_MS: Final = 5 * 60 * 1000
_READ_ONLY: Final = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
)
_ALL_QUEUE_ATTRIBUTES: Final = frozenset({*_SETTABLE, *_ACCEPTED, *_REDRIVE, *_READ_ONLY, *_FIFO})
_MESSAGE_SYSTEM_ATTRIBUTES: Final = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
)
_ALL_MESSAGE_ATTRIBUTES: Final = frozenset(
    {
        *_MESSAGE_SYSTEM_ATTRIBUTES,
        "All",
        "AWSTraceHeader",
        "SequenceNumber",
        "MessageDeduplicationId",
        "DeadLetterQueueSourceArn",
        "SqsManagedSseEnabled",
    }
)
_raw_string: Final = msgspec.json.Decoder(str)


class Caller(NamedTuple):
    """Who calls: the credential (None on an open server), the least role the action
    needs, the Host the client used (its queue URLs name it), and the hang-up future."""

    credential: AwsCredential | None
    access: Access
    host: str
    hang_up: Callable[[], asyncio.Future[Any]]
    #: The request's own W3C trace context (its traceparent header), if valid.
    trace: msgspec.Raw | None = None

    def may(self, queue: str) -> None:
        """Refuse the call unless the credential's role and queues allow it on ``queue``."""
        credential = self.credential
        if credential is None:
            return
        needed = Role(self.access.value)
        if credential.role < needed:
            raise SqsError(
                sqs_errors.ACCESS_DENIED,
                f"the access key {credential.access_key_id} has the role "
                f"{credential.role.label}; this action needs {needed.label} or above",
            )
        if not credential.may_use(queue):
            raise no_queue()  # as for a queue that does not exist: nothing learnt

    def sees(self, queue: str) -> bool:
        return self.credential is None or self.credential.may_use(queue)


Params = dict[str, Any]
Handler = Callable[["Actions", Params, Caller], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Action:
    handler: Handler
    access: Access


def _text(params: Params, name: str, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise SqsError(
                sqs_errors.MISSING_PARAMETER, f"The request must contain the parameter {name}."
            )
        return None
    if not isinstance(value, str):
        raise invalid(f"The parameter {name} must be a string.")
    return value


def _integer(params: Params, name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(
            f"Value {str(value)[:40]} for parameter {name} is invalid. Reason: must be "
            f"between {low} and {high}."
        )
    return value


def _names(params: Params, name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"The parameter {name} must be a list of strings.")
    return value


def _raw_size(entry: Params) -> int:
    """About the bytes of an entry's message attributes, before they are checked."""
    attributes = entry.get("MessageAttributes")
    if not isinstance(attributes, dict):
        return 0
    size = 0
    for name, value in attributes.items():
        size += len(str(name).encode())
        if isinstance(value, dict):
            size += sum(len(str(v).encode()) for v in value.values())
    return size


def _sent(task: Task, options: QueueOptions) -> dict[str, str]:
    """A sent message's id, and in a FIFO queue its sequence number (a duplicate's: the
    first message's)."""
    if not _is_fifo(options):
        return {"MessageId": str(task.id)}
    return {"MessageId": str(task.id), "SequenceNumber": _sequence(task)}


def _sequence(task: Task) -> str:
    """A FIFO message's SequenceNumber: its id, which grows with each message, as SQS's
    128-bit numbers shown in 20 digits."""
    return f"{task.id:020d}"


def _queue_name(url: str) -> str:
    """The queue a QueueUrl names: its path's last segment, unquoted ("" when none). A
    client sends the same few URLs on every call: each is parsed once, and kept when it is
    no longer than a queue URL can be (so that odd ones cannot fill the memory)."""
    if len(url) <= _CACHED_URL:
        return _cached_queue_name(url)
    return _parse_queue_name(url)


def _parse_queue_name(url: str) -> str:
    path = urlsplit(url).path if "://" in url else url
    return unquote(path.rstrip("/").rpartition("/")[2])


_cached_queue_name: Final = functools.lru_cache(maxsize=1024)(_parse_queue_name)
#: The longest QueueUrl kept parsed: a host, the account and an 80-character name, quoted.
_CACHED_URL: Final = 512


def _is_fifo(options: QueueOptions) -> bool:
    return _sqs_config(options).get("FifoQueue") == "true"


def _sqs_config(options: QueueOptions) -> dict[str, Any]:
    kept = options.configuration.get("sqs")
    return kept if isinstance(kept, dict) else {}


def body_of(task: Task) -> str:
    """A task's message body: its data when that is a JSON string, else the data's
    compact JSON."""
    raw = bytes(task.data)
    if raw[:1] == b'"':
        try:
            return _raw_string.decode(raw)
        except msgspec.DecodeError:
            pass
    return msgspec.json.encode(msgspec.json.decode(raw)).decode()


class Actions:
    """The actions, over one engine."""

    def __init__(
        self, engine: Engine, handles: Handles, *, scheme: str, account: str, limits: Limits
    ) -> None:
        self.engine = engine
        self.handles = handles
        self.scheme = scheme
        self.account = account
        self.limits = limits
        self.long_polls = 0
        #: The server's spans (katar.tracing), or None: set by katar serve when it exports.
        self.tracing: Tracing | None = None

    # -- queues ------------------------------------------------------------------------------

    def url(self, caller: Caller, name: str) -> str:
        return self.url_of(caller.host, name)

    def url_of(self, host: str, name: str) -> str:
        """The queue's URL, as a client that reached this server by ``host`` sees it."""
        return f"{self.scheme}://{host}/{self.account}/{quote(name, safe='')}"

    def arn(self, name: str) -> str:
        return f"arn:aws:sqs:katar:{self.account}:{name}"

    async def queue_of(self, params: Params, caller: Caller) -> tuple[str, QueueOptions]:
        """The queue that QueueUrl names (its last path segment; the host and account are
        not checked, so that a URL built for another endpoint still works)."""
        url = _text(params, "QueueUrl")
        assert url is not None
        name = _queue_name(url)
        if not name:
            raise invalid(f"Value {url[:200]} for parameter QueueUrl is invalid.")
        caller.may(name)
        options = await self.engine.find_queue(name)
        if options is None:
            raise no_queue()
        return name, options

    async def create_queue(self, params: Params, caller: Caller) -> dict[str, Any]:
        name = _text(params, "QueueName")
        assert name is not None
        fifo = name.endswith(".fifo")
        if not _QUEUE_NAME.fullmatch(name.removesuffix(".fifo")) or len(name) > 80:
            raise invalid(
                "Can only include alphanumeric characters, hyphens, or underscores. "
                "1 to 80 in length (a FIFO queue's with the .fifo suffix)"
            )
        caller.may(name)
        raw_attributes = params.get("Attributes")
        asks_fifo = isinstance(raw_attributes, dict) and "FifoQueue" in raw_attributes
        attributes = self._attributes_in(raw_attributes, fifo or asks_fifo, creating=True)
        if fifo != (attributes.get("FifoQueue") == "true"):
            raise invalid(
                "The name of a FIFO queue must end with the .fifo suffix, and a queue so "
                "named needs the attribute FifoQueue=true."
                if fifo
                else "Only a queue whose name ends with .fifo may be a FIFO queue."
            )
        tags = params.get("tags") or {}
        _check_tags(tags)
        existing = await self.engine.find_queue(name)
        if existing is not None:
            current = self._settable(existing)
            for key, value in attributes.items():
                if current.get(key) != value:
                    raise SqsError(
                        sqs_errors.QUEUE_NAME_EXISTS,
                        f"A queue already exists with the same name and a different value "
                        f"for attribute {key}",
                    )
            return {"QueueUrl": self.url(caller, name)}
        now = str(self.engine.now_ms() // 1000)
        kept: dict[str, Any] = {k: v for k, v in attributes.items() if k != "VisibilityTimeout"}
        kept.update(CreatedTimestamp=now, LastModifiedTimestamp=now, tags=dict(tags))
        visibility = int(attributes.get("VisibilityTimeout", "30"))
        # SQS redelivers without limit (a RedrivePolicy sets one): max_attempts 0. A FIFO
        # queue delivers one message of a group (the task's key) at a time, in order.
        raw: dict[str, Any] = {
            "timeout": max(1, visibility * 1000),
            "max_attempts": 0,
            "configuration": {"sqs": kept},
        }
        if fifo:
            raw["key_concurrency"] = 1
            for key, values in _FIFO.items():
                kept.setdefault(key, values[0])
        raw.update(await self._redrive_options(name, attributes, fifo, caller))
        options = parse_queue_options(raw)
        await self.engine.put_queue(name, options)
        return {"QueueUrl": self.url(caller, name)}

    def _attributes_in(self, raw: Any, fifo: bool, creating: bool = False) -> dict[str, str]:
        """Queue attributes to set on a queue (``fifo``: a FIFO queue's), checked."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise invalid("Attributes must be a map of attribute names to values.")
        checked: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                raise SqsError(
                    sqs_errors.INVALID_ATTRIBUTE_VALUE, f"Invalid value for the parameter {key}."
                )
            if key == "RedrivePolicy":
                value = _redrive_policy(value)
            elif key == "RedriveAllowPolicy":
                value = _redrive_allow_policy(value)
            elif key == "Policy":
                value = _queue_policy(value)
            elif key in _FIFO:
                if not fifo or (key == "FifoQueue" and not creating):
                    raise SqsError(
                        sqs_errors.INVALID_ATTRIBUTE_NAME,
                        f"Unknown Attribute {key}."
                        if not fifo
                        else "FifoQueue is set when the queue is created, and cannot change.",
                    )
                if value not in _FIFO[key]:
                    raise SqsError(
                        sqs_errors.INVALID_ATTRIBUTE_VALUE,
                        f"Invalid value for the parameter {key}: one of {', '.join(_FIFO[key])}.",
                    )
            elif key in _BOUNDS:
                low, high = _BOUNDS[key]
                if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
                    raise SqsError(
                        sqs_errors.INVALID_ATTRIBUTE_VALUE,
                        f"Invalid value for the parameter {key}: must be a whole number "
                        f"from {low} to {high}.",
                    )
                value = str(int(value))
            elif key == "SqsManagedSseEnabled":
                if value not in ("true", "false"):
                    raise SqsError(
                        sqs_errors.INVALID_ATTRIBUTE_VALUE,
                        "Invalid value for the parameter SqsManagedSseEnabled.",
                    )
            elif key not in _SETTABLE and key not in _ACCEPTED and key not in _REDRIVE:
                raise SqsError(sqs_errors.INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {key[:100]}.")
            checked[key] = value
        return checked

    def _settable(self, options: QueueOptions) -> dict[str, str]:
        """The queue's attributes that a call may set, as SQS shows them."""
        kept = _sqs_config(options)
        shown = {k: str(kept.get(k, v)) for k, v in _DEFAULTS.items()}
        shown["VisibilityTimeout"] = str(options.timeout // 1000)
        for key in ("Policy", "SqsManagedSseEnabled", *_ACCEPTED, *_FIFO):
            if key in kept:
                shown[key] = str(kept[key])
        if "SqsManagedSseEnabled" not in shown:
            shown["SqsManagedSseEnabled"] = "false"
        policy = self._redrive_shown(options)
        if policy is not None:
            shown["RedrivePolicy"] = policy
        if "RedriveAllowPolicy" in kept:
            shown["RedriveAllowPolicy"] = str(kept["RedriveAllowPolicy"])
        return shown

    def _redrive_shown(self, options: QueueOptions) -> str | None:
        """The queue's RedrivePolicy, from its ``dead_letter`` and ``max_attempts`` (a
        native queue's too): as it was set when those still say what it said."""
        target = options.dead_letter
        if target is None or options.max_attempts <= 0:
            return None
        kept = _sqs_config(options).get("RedrivePolicy")
        if isinstance(kept, str) and kept:
            arn, count = _policy_parts(kept)
            if _arn_name(arn) == target and count == options.max_attempts:
                return kept
        return _policy_text(self.arn(target), options.max_attempts)

    async def _redrive_options(
        self, name: str, attributes: Mapping[str, str], fifo: bool, caller: Caller
    ) -> dict[str, Any]:
        """The queue options a RedrivePolicy among ``attributes`` sets (none when it is
        not there): the target must exist, be of the queue's kind, other than the queue,
        and allow the queue by its RedriveAllowPolicy."""
        policy = attributes.get("RedrivePolicy")
        if policy is None:
            return {}
        if policy == "":  # SQS's way to remove a policy
            return {"dead_letter": None, "max_attempts": 0}
        arn, count = _policy_parts(policy)
        target = _arn_name(arn)

        def refuse(reason: str) -> SqsError:
            return invalid(
                f"Value {policy[:300]} for parameter RedrivePolicy is invalid. Reason: {reason}"
            )

        if target == name:
            raise refuse("A queue cannot be its own dead-letter queue.")
        caller.may(target)
        found = await self.engine.find_queue(target)
        if found is None:
            raise refuse("Dead letter target does not exist.")
        if _is_fifo(found) != fifo:
            raise refuse("Dead-letter queue must be same type of queue as the source.")
        allow = _sqs_config(found).get("RedriveAllowPolicy")
        if isinstance(allow, str) and allow:
            rule = json.loads(allow)
            permission = rule.get("redrivePermission")
            sources = {_arn_name(a) for a in rule.get("sourceQueueArns", [])}
            if permission == "denyAll" or (permission == "byQueue" and name not in sources):
                raise refuse(
                    f"Queue {arn} does not allow this queue to use it as a dead-letter "
                    "queue (its RedriveAllowPolicy)."
                )
        return {"dead_letter": target, "max_attempts": count}

    async def get_queue_url(self, params: Params, caller: Caller) -> dict[str, Any]:
        name = _text(params, "QueueName")
        assert name is not None
        if not caller.sees(name) or await self.engine.find_queue(name) is None:
            raise no_queue()
        return {"QueueUrl": self.url(caller, name)}

    async def list_queues(self, params: Params, caller: Caller) -> dict[str, Any]:
        prefix = _text(params, "QueueNamePrefix", required=False) or ""
        limit = _integer(params, "MaxResults", 1, 1000)
        token = _text(params, "NextToken", required=False)
        if token is not None and limit is None:
            raise invalid("NextToken needs MaxResults.")
        names = sorted(
            name
            for name in self.engine.queue_options()
            if name.startswith(prefix) and caller.sees(name)
        )
        if token:
            names = [name for name in names if name > unquote(token)]
        answer: dict[str, Any] = {}
        if limit is None:
            names = names[:1000]
        elif len(names) > limit:
            names = names[:limit]
            answer["NextToken"] = quote(names[-1], safe="")
        if names:
            answer["QueueUrls"] = [self.url(caller, name) for name in names]
        return answer

    async def delete_queue(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        await self.engine.delete_queue(name)
        return {}

    async def purge_queue(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        await self.engine.bulk(name, "delete", TaskFilter())
        # Messages in flight too, as SQS purges them.
        while True:
            running = await self.engine.list_tasks(name, TaskFilter(states=(State.RUNNING,)), 100)
            for task in running:
                with contextlib.suppress(NotFound):
                    await self.engine.delete_task(name, task.id)
            if len(running) < 100:
                return {}

    async def get_queue_attributes(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        wanted = _names(params, "AttributeNames")
        for key in wanted:
            if key != "All" and key not in _ALL_QUEUE_ATTRIBUTES:
                raise SqsError(sqs_errors.INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {key[:100]}.")
        if not wanted:
            return {}
        every = "All" in wanted
        kept = _sqs_config(options)
        shown: dict[str, str] = self._settable(options)
        counts = (await self.engine.stats()).get(name, {})
        # The public counts say "queued" for ready and delayed tasks alike: the delayed
        # ones are counted apart (a count of the queue's tasks with a not-before time).
        delayed, _ = await self.engine.bulk(
            name, "cancel", TaskFilter(states=(State.SCHEDULED,)), dry_run=True
        )
        queued = counts.get("queued", 0) + counts.get("paused", 0)
        shown["ApproximateNumberOfMessages"] = str(max(0, queued - delayed))
        shown["ApproximateNumberOfMessagesNotVisible"] = str(counts.get("in progress", 0))
        shown["ApproximateNumberOfMessagesDelayed"] = str(delayed)
        now = str(self.engine.now_ms() // 1000)
        shown["CreatedTimestamp"] = str(kept.get("CreatedTimestamp", now))
        shown["LastModifiedTimestamp"] = str(kept.get("LastModifiedTimestamp", now))
        shown["QueueArn"] = self.arn(name)
        attributes = {k: v for k, v in shown.items() if every or k in wanted}
        return {"Attributes": attributes} if attributes else {}

    async def set_queue_attributes(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        if params.get("Attributes") is None:
            raise SqsError(
                sqs_errors.MISSING_PARAMETER, "The request must contain the parameter Attributes."
            )
        fifo = _is_fifo(options)
        attributes = self._attributes_in(params.get("Attributes"), fifo)
        kept = dict(_sqs_config(options))
        changes: dict[str, Any] = await self._redrive_options(name, attributes, fifo, caller)
        for key, value in attributes.items():
            if key == "VisibilityTimeout":
                changes["timeout"] = max(1, int(value) * 1000)
            elif (key in _REDRIVE or key == "Policy") and value == "":
                kept.pop(key, None)
            else:
                kept[key] = value
        kept["LastModifiedTimestamp"] = str(self.engine.now_ms() // 1000)
        changes["configuration"] = {**options.configuration, "sqs": kept}
        await self.engine.patch_queue(name, changes)
        return {}

    async def tag_queue(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        tags = params.get("Tags")
        if tags is None:
            raise SqsError(
                sqs_errors.MISSING_PARAMETER, "The request must contain the parameter Tags."
            )
        _check_tags(tags)
        kept = dict(_sqs_config(options))
        merged = {**kept.get("tags", {}), **tags}
        if len(merged) > 50:
            raise invalid("Too many tags added for queue: a queue may have up to 50 tags.")
        kept["tags"] = merged
        await self.engine.patch_queue(
            name, {"configuration": {**options.configuration, "sqs": kept}}
        )
        return {}

    async def untag_queue(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        keys = _names(params, "TagKeys")
        if "TagKeys" not in params:
            raise SqsError(
                sqs_errors.MISSING_PARAMETER, "The request must contain the parameter TagKeys."
            )
        kept = dict(_sqs_config(options))
        kept["tags"] = {k: v for k, v in kept.get("tags", {}).items() if k not in keys}
        await self.engine.patch_queue(
            name, {"configuration": {**options.configuration, "sqs": kept}}
        )
        return {}

    async def list_queue_tags(self, params: Params, caller: Caller) -> dict[str, Any]:
        _, options = await self.queue_of(params, caller)
        tags = _sqs_config(options).get("tags") or {}
        return {"Tags": tags} if tags else {}

    async def add_permission(self, params: Params, caller: Caller) -> dict[str, Any]:
        """A statement added to the queue's Policy, as SQS writes it (kept, not enforced)."""
        name, options = await self.queue_of(params, caller)
        label = _label(params)
        accounts = _names(params, "AWSAccountIds")
        if not accounts or not all(_ACCOUNT_ID.fullmatch(a) for a in accounts):
            shown = ", ".join(accounts)[:200]
            raise invalid(
                f"Value [{shown}] for parameter PrincipalId is invalid. Reason: Unable to verify."
            )
        actions = _names(params, "Actions")
        if not actions:
            raise SqsError(
                sqs_errors.MISSING_PARAMETER, "The request must contain the parameter Actions."
            )
        if len(actions) > MAX_POLICY_ACTIONS:
            raise SqsError(
                sqs_errors.OVER_LIMIT,
                f"{len(actions)} Actions were found, maximum allowed is {MAX_POLICY_ACTIONS}.",
            )
        for action in actions:
            if action not in _SHARED_ACTIONS:
                reason = (
                    "Only the queue owner is allowed to invoke this action."
                    if action in ACTIONS
                    else "Please refer to the appropriate WSDL for a list of valid actions."
                )
                raise invalid(
                    f"Value SQS:{action[:100]} for parameter ActionName is invalid. "
                    f"Reason: {reason}"
                )
        kept = dict(_sqs_config(options))
        policy, statements = _policy_statements(kept.get("Policy"))
        if any(statement.get("Sid") == label for statement in statements):
            raise invalid(f"Value {label} for parameter Label is invalid. Reason: Already exists.")
        if len(statements) >= MAX_POLICY_STATEMENTS:
            raise SqsError(
                sqs_errors.OVER_LIMIT,
                f"{len(statements) + 1} statements were found, maximum allowed is "
                f"{MAX_POLICY_STATEMENTS}.",
            )
        principals = [f"arn:aws:iam::{account}:root" for account in accounts]
        if _principal_count(statements) + len(principals) > MAX_POLICY_PRINCIPALS:
            raise SqsError(
                sqs_errors.OVER_LIMIT,
                f"The policy would name more than {MAX_POLICY_PRINCIPALS} principals.",
            )
        granted = [f"SQS:{action}" for action in actions]
        arn = self.arn(name)
        statements.append(
            {
                "Sid": label,
                "Effect": "Allow",
                "Principal": {"AWS": principals[0] if len(principals) == 1 else principals},
                "Action": granted[0] if len(granted) == 1 else granted,
                "Resource": arn,
            }
        )
        if not policy:
            policy = {"Version": "2012-10-17", "Id": f"{arn}/SQSDefaultPolicy"}
        policy["Statement"] = statements
        kept["Policy"] = json.dumps(policy, separators=(",", ":"))
        await self._keep(name, options, kept)
        return {}

    async def remove_permission(self, params: Params, caller: Caller) -> dict[str, Any]:
        """The statement of the queue's Policy with this Label (Sid) removed; the Policy
        itself once it has no statement left."""
        name, options = await self.queue_of(params, caller)
        label = _label(params)
        kept = dict(_sqs_config(options))
        policy, statements = _policy_statements(kept.get("Policy"))
        left = [statement for statement in statements if statement.get("Sid") != label]
        if len(left) == len(statements):
            raise invalid(
                f"Value {label} for parameter Label is invalid. Reason: can't find label on "
                "existing policy."
            )
        if left:
            policy["Statement"] = left
            kept["Policy"] = json.dumps(policy, separators=(",", ":"))
        else:
            kept.pop("Policy", None)
        await self._keep(name, options, kept)
        return {}

    async def _keep(self, name: str, options: QueueOptions, kept: dict[str, Any]) -> None:
        """The queue's SQS configuration replaced by ``kept``, as changed now."""
        kept["LastModifiedTimestamp"] = str(self.engine.now_ms() // 1000)
        await self.engine.patch_queue(
            name, {"configuration": {**options.configuration, "sqs": kept}}
        )

    # -- messages ----------------------------------------------------------------------------

    def _new_task(
        self,
        entry: Params,
        options: QueueOptions,
        where: str = "",
        request_trace: msgspec.Raw | None = None,
    ) -> tuple[NewTask, dict[str, Any]]:
        """A message to send as a task to enqueue, and the digests of its answer."""
        body = _text(entry, "MessageBody")
        assert body is not None
        check_body(body)
        attributes = check_attributes(entry.get("MessageAttributes"))
        system = check_attributes(entry.get("MessageSystemAttributes"), system=True)
        limit = int(_sqs_config(options).get("MaximumMessageSize", MAX_MESSAGE_BYTES))
        size = len(body.encode()) + attributes_size(attributes)
        if size > limit:
            raise invalid(
                f"One or more parameters are invalid. Reason: Message must be shorter than "
                f"{limit} bytes."
            )
        config = _sqs_config(options)
        fifo = config.get("FifoQueue") == "true"
        delay = _integer(entry, "DelaySeconds", 0, MAX_DELAY)
        if delay is not None and fifo:
            raise invalid(
                f"Value {delay} for parameter DelaySeconds is invalid. Reason: The request "
                "include parameter that is not valid for this queue type (a FIFO queue's "
                "delay is the queue's DelaySeconds)."
            )
        if delay is None:
            delay = int(config.get("DelaySeconds", 0))
        group = _text(entry, "MessageGroupId", required=False)
        if group is not None and not _DEDUPLICATION_ID.fullmatch(group):
            raise invalid(
                "MessageGroupId must be 1 to 128 characters: letters, digits and punctuation."
            )
        deduplication = _text(entry, "MessageDeduplicationId", required=False)
        unique_key = None
        if not fifo:
            if deduplication is not None:
                raise invalid(
                    "The request includes parameter MessageDeduplicationId, which is only "
                    "valid for FIFO queues."
                )
        else:
            if group is None:
                raise SqsError(
                    sqs_errors.MISSING_PARAMETER,
                    "The request must contain the parameter MessageGroupId.",
                )
            if deduplication is None:
                if config.get("ContentBasedDeduplication") != "true":
                    raise invalid(
                        "The queue should either have ContentBasedDeduplication enabled or "
                        "MessageDeduplicationId provided explicitly"
                    )
                deduplication = hashlib.sha256(body.encode()).hexdigest()
            elif not _DEDUPLICATION_ID.fullmatch(deduplication):
                raise invalid(
                    "MessageDeduplicationId must be 1 to 128 characters: letters, digits and "
                    "punctuation."
                )
            # Deduplication: a unique key held for 5 minutes (or while the first message
            # waits), per queue or per group as DeduplicationScope says.
            scope = group if config.get("DeduplicationScope") == "messageGroup" else ""
            unique_key = f"sqs:{len(scope)}:{scope}{deduplication}"
        kept: dict[str, Any] = {}
        if attributes:
            kept["MessageAttributes"] = attributes
        if system:
            kept["MessageSystemAttributes"] = system
        if fifo:
            kept["MessageDeduplicationId"] = deduplication
        task = NewTask(
            data=msgspec.Raw(msgspec.json.encode(body)),
            delay_ms=delay * 1000,
            key=group,
            unique_key=unique_key,
            unique_for_ms=None if unique_key is None else DEDUPLICATION_MS,
            attributes=msgspec.Raw(msgspec.json.encode(kept)) if kept else None,
            trace=trace.sent_trace(attributes, system, request_trace),
        )
        digests: dict[str, Any] = {"MD5OfMessageBody": md5_hex(body.encode())}
        md5 = md5_of_attributes(attributes)
        if md5 is not None:
            digests["MD5OfMessageAttributes"] = md5
        md5 = md5_of_attributes(system)
        if md5 is not None:
            digests["MD5OfMessageSystemAttributes"] = md5
        return task, digests

    async def send_message(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        task, digests = self._new_task(params, options, request_trace=caller.trace)
        start = time.time_ns()
        created = await self.engine.enqueue(name, [task])
        if self.tracing is not None:
            self.tracing.send(name, created, start, name="SendMessage", context=caller.trace)
        return {**digests, **_sent(created[0], options)}

    async def send_message_batch(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        entries = _entries(params)
        # The batch's bytes: its bodies and their attributes' names, types and values.
        total = sum(
            len(str(entry.get("MessageBody", "")).encode()) + _raw_size(entry) for entry in entries
        )
        if total > MAX_MESSAGE_BYTES:
            raise SqsError(
                sqs_errors.BATCH_TOO_LONG,
                f"Batch requests cannot be longer than {MAX_MESSAGE_BYTES} bytes. You have "
                f"sent {total} bytes.",
            )
        failed: list[dict[str, Any]] = []
        accepted: list[tuple[str, NewTask, dict[str, Any]]] = []
        for entry in entries:
            try:
                task, digests = self._new_task(entry, options, request_trace=caller.trace)
            except SqsError as exc:
                failed.append(_failure(entry["Id"], exc))
                continue
            accepted.append((entry["Id"], task, digests))
        successful = []
        if accepted:
            start = time.time_ns()
            created = await self.engine.enqueue(name, [task for _, task, _ in accepted])
            if self.tracing is not None:
                self.tracing.send(
                    name, created, start, name="SendMessageBatch", context=caller.trace
                )
            for (entry_id, _, digests), made in zip(accepted, created, strict=True):
                successful.append({"Id": entry_id, **digests, **_sent(made, options)})
        return {"Successful": successful, "Failed": failed}

    async def receive_message(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, options = await self.queue_of(params, caller)
        limit = _integer(params, "MaxNumberOfMessages", 1, MAX_BATCH) or 1
        visibility = _integer(params, "VisibilityTimeout", 0, MAX_VISIBILITY)
        wait = _integer(params, "WaitTimeSeconds", 0, MAX_WAIT_SECONDS)
        if wait is None:
            wait = int(_sqs_config(options).get("ReceiveMessageWaitTimeSeconds", 0))
        wanted = set(_names(params, "AttributeNames")) | set(
            _names(params, "MessageSystemAttributeNames")
        )
        for key in wanted:
            if key not in _ALL_MESSAGE_ATTRIBUTES:
                raise SqsError(sqs_errors.INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {key[:100]}.")
        names = _names(params, "MessageAttributeNames")
        request_attempt = _text(params, "ReceiveRequestAttemptId", required=False)
        if request_attempt is not None and not 1 <= len(request_attempt) <= 128:
            raise invalid("ReceiveRequestAttemptId must be 1 to 128 characters.")
        if wait > 0:
            if self.long_polls >= self.limits.max_long_polls:
                raise SqsError(
                    sqs_errors.OVER_LIMIT,
                    f"this server holds its limit of {self.limits.max_long_polls} long polls; "
                    "retry in a moment",
                )
            self.long_polls += 1
            start = time.time_ns()
            try:
                tasks = await self.engine.poll(name, (), limit, wait, None, caller.hang_up())
            finally:
                self.long_polls -= 1
        else:
            start = time.time_ns()
            tasks = await self.engine.poll(name, (), limit)
        if visibility is not None and any(
            rules.lease_ms(task, options) != visibility * 1000 for task in tasks
        ):
            # The lease of this receive: a heartbeat of each delivery that sets its end.
            acks = [
                Ack(
                    task_id=task.id,
                    status="in progress",
                    attempt=task.attempts,
                    lease=visibility * 1000,
                )
                for task in tasks
            ]
            await self.engine.poll(name, acks, 0)
        if not tasks:
            return {}
        if self.tracing is not None:
            self.tracing.receive(name, tasks, start, name="ReceiveMessage", context=caller.trace)
        fifo = _is_fifo(options)
        every = "All" in wanted
        messages = []
        for task in tasks:
            body = body_of(task)
            message: dict[str, Any] = {
                "MessageId": str(task.id),
                "ReceiptHandle": self.handles.make(name, task.id, task.attempts),
                "MD5OfBody": md5_hex(body.encode()),
                "Body": body,
            }
            stored = _stored_attributes(task)
            context = None if task.trace is None else trace.stored(task.trace)
            if wanted:
                attributes = self._system_attributes(task)
                xray = stored.MessageSystemAttributes.get("AWSTraceHeader")
                if xray is not None and "StringValue" in xray:
                    attributes["AWSTraceHeader"] = xray["StringValue"]
                elif context is not None:
                    attributes["AWSTraceHeader"] = trace.to_xray(context.traceparent)
                if fifo:
                    attributes["SequenceNumber"] = _sequence(task)
                    if stored.MessageDeduplicationId is not None:
                        attributes["MessageDeduplicationId"] = stored.MessageDeduplicationId
                message["Attributes"] = {
                    k: v for k, v in attributes.items() if every or k in wanted
                }
            shown = stored.MessageAttributes
            if context is not None and names:  # as sent, else the task's (a native one's)
                shown = {**trace.message_attributes(context), **shown}
            chosen = _chosen(shown, names)
            if chosen:
                message["MessageAttributes"] = chosen
                message["MD5OfMessageAttributes"] = md5_of_attributes(chosen)
            messages.append(message)
        return {"Messages": messages}

    def _system_attributes(self, task: Task) -> dict[str, str]:
        deliveries = rules.deliveries(task)
        first = deliveries[0].started_at if deliveries else task.updated_at
        shown = {
            "SenderId": self.account,
            "SentTimestamp": str(task.created_at),
            "ApproximateReceiveCount": str(task.attempts),
            "ApproximateFirstReceiveTimestamp": str(first),
        }
        if task.key is not None:
            shown["MessageGroupId"] = task.key
        return shown

    async def delete_message(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        receipt = self.handles.read(name, params.get("ReceiptHandle"))
        await self._done(name, [receipt], "DeleteMessage", caller)
        return {}

    async def _done(self, name: str, receipts: list[Any], action: str, caller: Caller) -> None:
        """Finish the deliveries the handles name; a stale one changes nothing."""
        acks = [Ack(task_id=r.task_id, status="done", attempt=r.attempt) for r in receipts]
        start = time.time_ns()
        # The tasks as the store hands them back: their settle span's contexts.
        rows: list[Task] | None = None if self.tracing is None else []
        try:
            await self.engine.poll(name, acks, 0, settled=rows)
        except NotFound:  # a task gone (deleted, purged): nothing to do, as SQS answers
            for ack in acks:
                with contextlib.suppress(NotFound):
                    await self.engine.poll(name, [ack], 0, settled=rows)
        if self.tracing is not None:
            settled = [(receipt.task_id, "done") for receipt in receipts]
            self.tracing.settle(
                name, settled, start, None, None, rows or (), name=action, context=caller.trace
            )

    async def delete_message_batch(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        entries = _entries(params)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        receipts = []
        ids = []
        for entry in entries:
            try:
                receipts.append(self.handles.read(name, entry.get("ReceiptHandle")))
                ids.append(entry["Id"])
            except SqsError as exc:
                failed.append(_failure(entry["Id"], exc))
        if receipts:
            await self._done(name, receipts, "DeleteMessageBatch", caller)
            successful = [{"Id": entry_id} for entry_id in ids]
        return {"Successful": successful, "Failed": failed}

    async def _change_visibility(
        self, name: str, entry: Params, action: str, caller: Caller
    ) -> None:
        receipt = self.handles.read(name, entry.get("ReceiptHandle"))
        value = entry.get("VisibilityTimeout")
        if value is None:
            raise SqsError(
                sqs_errors.MISSING_PARAMETER,
                "The request must contain the parameter VisibilityTimeout.",
            )
        visibility = _integer(entry, "VisibilityTimeout", 0, MAX_VISIBILITY)
        assert visibility is not None
        try:
            task = await self.engine.get_task(name, receipt.task_id)
        except NotFound:
            task = None
        if task is None or task.state is not State.RUNNING or task.attempts != receipt.attempt:
            raise SqsError(
                sqs_errors.MESSAGE_NOT_INFLIGHT
                if task is not None and task.attempts == receipt.attempt
                else sqs_errors.INVALID_PARAMETER_VALUE,
                f"Value {str(entry.get('ReceiptHandle'))[:100]} for parameter ReceiptHandle is "
                "invalid. Reason: Message does not exist or is not available for visibility "
                "timeout change.",
            )
        ack = Ack(
            task_id=receipt.task_id,
            status="in progress",
            attempt=receipt.attempt,
            lease=visibility * 1000,
        )
        start = time.time_ns()
        await self.engine.poll(name, [ack], 0)
        if self.tracing is not None:  # the task read above holds its context
            settled = [(task.id, ack.status)]
            self.tracing.settle(
                name, settled, start, None, None, [task], name=action, context=caller.trace
            )

    async def change_message_visibility(self, params: Params, caller: Caller) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        await self._change_visibility(name, params, "ChangeMessageVisibility", caller)
        return {}

    async def change_message_visibility_batch(
        self, params: Params, caller: Caller
    ) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in _entries(params):
            try:
                await self._change_visibility(name, entry, "ChangeMessageVisibilityBatch", caller)
            except SqsError as exc:
                failed.append(_failure(entry["Id"], exc))
            else:
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}

    # -- dead-letter queues and message move tasks -------------------------------------------

    async def list_dead_letter_source_queues(
        self, params: Params, caller: Caller
    ) -> dict[str, Any]:
        name, _ = await self.queue_of(params, caller)
        limit = _integer(params, "MaxResults", 1, 1000)
        token = _text(params, "NextToken", required=False)
        if token is not None and limit is None:
            raise invalid("NextToken needs MaxResults.")
        names = [n for n in self.engine.dead_letter_sources(name) if caller.sees(n)]
        if token:
            names = [n for n in names if n > unquote(token)]
        answer: dict[str, Any] = {}
        if limit is None:
            names = names[:1000]
        elif len(names) > limit:
            names = names[:limit]
            answer["NextToken"] = quote(names[-1], safe="")
        answer["queueUrls"] = [self.url(caller, n) for n in names]
        return answer

    async def _queue_by_arn(self, params: Params, field: str, caller: Caller) -> str:
        arn = _text(params, field)
        assert arn is not None
        name = _arn_name(arn)
        if not name:
            raise invalid(f"Value {arn[:200]} for parameter {field} is invalid: not a queue ARN.")
        caller.may(name)
        if await self.engine.find_queue(name) is None:
            raise SqsError(
                sqs_errors.RESOURCE_NOT_FOUND,
                f"The resource that you specified for the {field} parameter doesn't exist.",
            )
        return name

    async def start_message_move_task(self, params: Params, caller: Caller) -> dict[str, Any]:
        source = await self._queue_by_arn(params, "SourceArn", caller)
        to = None
        if params.get("DestinationArn") is not None:
            to = await self._queue_by_arn(params, "DestinationArn", caller)
        rate = _integer(params, "MaxNumberOfMessagesPerSecond", 1, MAX_MOVE_RATE)
        if not self.engine.dead_letter_sources(source):
            raise invalid("Source queue must be configured as a Dead Letter Queue.")
        if to == source:
            raise invalid("The destination queue must differ from the source queue.")
        try:
            job = await self.engine.start_redrive(
                source,
                float(rate) if rate is not None else _FASTEST,
                to,
                may_use=caller.sees,
            )
        except Conflict:
            raise SqsError(
                sqs_errors.UNSUPPORTED_OPERATION,
                "There is already a message movement task running for this source queue: "
                "cancel it or wait for its end.",
            ) from None
        return {"TaskHandle": _task_handle(job)}

    async def cancel_message_move_task(self, params: Params, caller: Caller) -> dict[str, Any]:
        handle = _text(params, "TaskHandle")
        assert handle is not None
        queue, job_id = _read_task_handle(handle)
        if not caller.sees(queue):
            raise _no_task()
        job = await self.engine.find_move_job(job_id)
        if job is None or job.queue != queue:
            raise _no_task()
        if job.state != "running":
            raise SqsError(
                sqs_errors.RESOURCE_NOT_FOUND,
                f"The message movement task is {job.state.upper()}; only a RUNNING task can "
                "be cancelled.",
            )
        try:
            job = await self.engine.cancel_redrive(queue, job_id)
        except NotFound:  # its queue deleted meanwhile
            raise _no_task() from None
        return {"ApproximateNumberOfMessagesMoved": job.moved}

    async def list_message_move_tasks(self, params: Params, caller: Caller) -> dict[str, Any]:
        source = await self._queue_by_arn(params, "SourceArn", caller)
        # SQS answers the most recent task unless asked for more (up to 10).
        limit = _integer(params, "MaxResults", 1, 10) or 1
        results = []
        for job in (await self.engine.move_history(source))[:limit]:
            entry: dict[str, Any] = {}
            if job.state == "running":
                entry["TaskHandle"] = _task_handle(job)
            entry["Status"] = job.state.upper()
            entry["SourceArn"] = _text(params, "SourceArn")
            if job.to is not None:
                entry["DestinationArn"] = self.arn(job.to)
            if job.rate != _FASTEST:
                entry["MaxNumberOfMessagesPerSecond"] = int(job.rate)
            entry["ApproximateNumberOfMessagesMoved"] = job.moved
            entry["ApproximateNumberOfMessagesToMove"] = job.total
            if job.error is not None:
                entry["FailureReason"] = job.error
            entry["StartedTimestamp"] = job.started_at
            results.append(entry)
        return {"Results": results}


class _Stored(msgspec.Struct):
    """What a send keeps with its task (Task.attributes), as the SQS API writes it."""

    MessageAttributes: dict[str, dict[str, str]] = {}
    MessageSystemAttributes: dict[str, dict[str, str]] = {}
    MessageDeduplicationId: str | None = None


_NOTHING_STORED: Final = _Stored()
_stored: Final = msgspec.json.Decoder(_Stored)


def _stored_attributes(task: Task) -> _Stored:
    """The message's attributes as the send stored them (none for a native task)."""
    if task.attributes is None:
        return _NOTHING_STORED
    try:
        return _stored.decode(task.attributes)
    except msgspec.ValidationError:  # written by another program: shown as none
        return _NOTHING_STORED
    except msgspec.DecodeError:
        return _NOTHING_STORED


def _chosen(attributes: dict[str, dict[str, str]], names: list[str]) -> dict[str, dict[str, str]]:
    """The message attributes a receive asked for: ``All`` (or ``.*``), names, and prefixes
    ``name.*``."""
    if not attributes or not names:
        return {}
    if "All" in names or ".*" in names:
        return attributes
    prefixes = tuple(name[:-1] for name in names if name.endswith(".*"))
    return {
        name: value
        for name, value in attributes.items()
        if name in names or (prefixes and name.startswith(prefixes))
    }


def _entries(params: Params) -> list[Params]:
    """A batch's entries, checked: 1 to 10, each an object with a distinct valid Id."""
    entries = params.get("Entries")
    if entries is None:
        raise SqsError(
            sqs_errors.MISSING_PARAMETER, "The request must contain the parameter Entries."
        )
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise invalid("Entries must be a list of objects.")
    if not entries:
        raise SqsError(
            sqs_errors.EMPTY_BATCH,
            "There should be at least one SendMessageBatchRequestEntry in the request.",
        )
    if len(entries) > MAX_BATCH:
        raise SqsError(
            sqs_errors.TOO_MANY_ENTRIES,
            f"Maximum number of entries per request are {MAX_BATCH}. You have sent {len(entries)}.",
        )
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry.get("Id")
        if not isinstance(entry_id, str) or not _BATCH_ID.fullmatch(entry_id):
            raise SqsError(
                sqs_errors.INVALID_BATCH_ENTRY_ID,
                "A batch entry id can only contain alphanumeric characters, hyphens and "
                "underscores. It can be at most 80 letters long.",
            )
        if entry_id in seen:
            raise SqsError(sqs_errors.BATCH_IDS_NOT_DISTINCT, f"Id {entry_id} repeated.")
        seen.add(entry_id)
    return entries


def _failure(entry_id: str, exc: SqsError) -> dict[str, Any]:
    return {
        "Id": entry_id,
        "SenderFault": exc.kind.sender,
        "Code": exc.kind.code,
        "Message": exc.message,
    }


def _check_tags(tags: Any) -> None:
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and 1 <= len(k) <= 128 and len(v) <= 256
        for k, v in tags.items()
    ):
        raise invalid("Tags must map keys of 1 to 128 characters to values of up to 256.")


def _arn_name(arn: str) -> str:
    """The queue an SQS ARN names (its region and account are not checked, as queue URLs'
    hosts are not)."""
    match = _ARN.fullmatch(arn)
    return match.group(1) if match else ""


def _bad_policy(name: str, value: str, reason: str) -> SqsError:
    return invalid(f"Value {value[:300]} for parameter {name} is invalid. Reason: {reason}")


def _policy_parts(policy: str) -> tuple[str, int]:
    """A checked RedrivePolicy's target ARN and maxReceiveCount."""
    parsed = json.loads(policy)
    return str(parsed["deadLetterTargetArn"]), int(parsed["maxReceiveCount"])


def _policy_text(arn: str, count: int) -> str:
    """A RedrivePolicy as SQS shows it: compact JSON, the count a number."""
    return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count}, separators=(",", ":"))


def _json_object(name: str, value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError:
        raise _bad_policy(name, value, f"{name} must be a JSON object.") from None
    if not isinstance(parsed, dict):
        raise _bad_policy(name, value, f"{name} must be a JSON object.")
    return parsed


def _redrive_policy(value: str) -> str:
    """A RedrivePolicy checked, as it is kept and shown (empty: remove the policy)."""
    if value == "":
        return value
    policy = _json_object("RedrivePolicy", value)
    unknown = set(policy) - {"deadLetterTargetArn", "maxReceiveCount"}
    if unknown:
        raise _bad_policy(
            "RedrivePolicy", value, f"Unknown field {sorted(unknown)[0][:80]} in RedrivePolicy."
        )
    arn = policy.get("deadLetterTargetArn")
    if not isinstance(arn, str) or not _arn_name(arn):
        raise _bad_policy(
            "RedrivePolicy",
            value,
            "deadLetterTargetArn must be a queue's ARN, "
            "arn:aws:sqs:<region>:<account>:<queue name>.",
        )
    count = policy.get("maxReceiveCount")
    if isinstance(count, str) and count.isascii() and count.isdigit():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int):
        raise _bad_policy(
            "RedrivePolicy", value, "maxReceiveCount must be a whole number (in the policy)."
        )
    if not 1 <= count <= MAX_RECEIVE_COUNT:
        raise _bad_policy(
            "RedrivePolicy",
            value,
            f"Invalid value for maxReceiveCount: {count}, valid values are from 1 to "
            f"{MAX_RECEIVE_COUNT} both inclusive.",
        )
    return _policy_text(arn, count)


def _redrive_allow_policy(value: str) -> str:
    """A RedriveAllowPolicy checked, as it is kept and shown (empty: remove it)."""
    if value == "":
        return value
    policy = _json_object("RedriveAllowPolicy", value)
    permission = policy.get("redrivePermission")
    if permission not in ("allowAll", "denyAll", "byQueue"):
        raise _bad_policy(
            "RedriveAllowPolicy", value, "redrivePermission must be allowAll, denyAll or byQueue."
        )
    sources = policy.get("sourceQueueArns")
    unknown = set(policy) - {"redrivePermission", "sourceQueueArns"}
    if unknown:
        raise _bad_policy(
            "RedriveAllowPolicy",
            value,
            f"Unknown field {sorted(unknown)[0][:80]} in RedriveAllowPolicy.",
        )
    if permission == "byQueue":
        if (
            not isinstance(sources, list)
            or not 1 <= len(sources) <= MAX_ALLOWED_SOURCES
            or not all(isinstance(a, str) and _arn_name(a) for a in sources)
        ):
            raise _bad_policy(
                "RedriveAllowPolicy",
                value,
                f"byQueue needs sourceQueueArns: 1 to {MAX_ALLOWED_SOURCES} queue ARNs.",
            )
    elif sources is not None:
        raise _bad_policy(
            "RedriveAllowPolicy",
            value,
            "sourceQueueArns is only allowed with redrivePermission byQueue.",
        )
    shown: dict[str, Any] = {"redrivePermission": permission}
    if sources is not None:
        shown["sourceQueueArns"] = sources
    return json.dumps(shown, separators=(",", ":"))


def _label(params: Params) -> str:
    """A permission's Label, checked."""
    label = _text(params, "Label")
    assert label is not None
    if not _LABEL.fullmatch(label):
        raise invalid(
            f"Value {label[:100]} for parameter Label is invalid. Reason: Can only include "
            "alphanumeric characters, hyphens, or underscores. 1 to 80 in length."
        )
    return label


def _policy_statements(text: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A kept Policy (empty: none) and its statements, as a list (IAM allows one statement
    as an object)."""
    if not isinstance(text, str) or not text:
        return {}, []
    try:
        policy = json.loads(text)
    except ValueError:
        policy = None
    if not isinstance(policy, dict):  # kept by a version that did not check it
        raise invalid(
            "The queue's Policy is not a JSON object: set one (SetQueueAttributes) or remove "
            "it (an empty Policy) first."
        )
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    return policy, [s for s in statements if isinstance(s, dict)]


def _principal_count(statements: list[dict[str, Any]]) -> int:
    """The AWS principals the statements name."""
    count = 0
    for statement in statements:
        principal = statement.get("Principal")
        named = principal.get("AWS") if isinstance(principal, dict) else principal
        count += len(named) if isinstance(named, list) else 1
    return count


def _queue_policy(value: str) -> str:
    """A Policy checked: a JSON object, kept as given (empty: remove it)."""
    if value == "":
        return value
    try:
        policy = json.loads(value)
    except ValueError:
        policy = None
    if not isinstance(policy, dict) or not isinstance(policy.get("Statement", []), list | dict):
        raise SqsError(
            sqs_errors.INVALID_ATTRIBUTE_VALUE,
            "Invalid value for the parameter Policy: a JSON object whose Statement is a list "
            "of statements.",
        )
    return value


def _task_handle(job: MoveJob) -> str:
    """A message move task's TaskHandle: its queue and the store's id of the job, opaque to
    the client, and the same on every server sharing the store."""
    raw = f"{job.id}.{job.queue}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_task_handle(handle: str) -> tuple[str, int]:
    """The queue and job id a TaskHandle names; ResourceNotFoundException when none."""
    try:
        raw = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4)).decode()
    except (binascii.Error, ValueError):
        raise _no_task() from None
    job_id, _, queue = raw.partition(".")
    # A job id is a store's 64-bit integer: a longer one names no job.
    if not (job_id.isascii() and job_id.isdigit()) or len(job_id) > 18 or not queue:
        raise _no_task()
    return queue, int(job_id)


def _no_task() -> SqsError:
    return SqsError(sqs_errors.RESOURCE_NOT_FOUND, "The specified TaskHandle does not exist.")


#: Each action: its method and the least role it needs (as a token's).
ACTIONS: Final[Mapping[str, Action]] = {
    "CreateQueue": Action(Actions.create_queue, Access.ADMIN),
    "GetQueueUrl": Action(Actions.get_queue_url, Access.WORKER),
    "ListQueues": Action(Actions.list_queues, Access.WORKER),
    "DeleteQueue": Action(Actions.delete_queue, Access.ADMIN),
    "PurgeQueue": Action(Actions.purge_queue, Access.ADMIN),
    "GetQueueAttributes": Action(Actions.get_queue_attributes, Access.WORKER),
    "SetQueueAttributes": Action(Actions.set_queue_attributes, Access.ADMIN),
    "TagQueue": Action(Actions.tag_queue, Access.ADMIN),
    "UntagQueue": Action(Actions.untag_queue, Access.ADMIN),
    "ListQueueTags": Action(Actions.list_queue_tags, Access.WORKER),
    "SendMessage": Action(Actions.send_message, Access.PRODUCER),
    "SendMessageBatch": Action(Actions.send_message_batch, Access.PRODUCER),
    "ReceiveMessage": Action(Actions.receive_message, Access.WORKER),
    "DeleteMessage": Action(Actions.delete_message, Access.WORKER),
    "DeleteMessageBatch": Action(Actions.delete_message_batch, Access.WORKER),
    "ChangeMessageVisibility": Action(Actions.change_message_visibility, Access.WORKER),
    "ChangeMessageVisibilityBatch": Action(Actions.change_message_visibility_batch, Access.WORKER),
    "ListDeadLetterSourceQueues": Action(Actions.list_dead_letter_source_queues, Access.WORKER),
    "StartMessageMoveTask": Action(Actions.start_message_move_task, Access.ADMIN),
    "ListMessageMoveTasks": Action(Actions.list_message_move_tasks, Access.WORKER),
    "CancelMessageMoveTask": Action(Actions.cancel_message_move_task, Access.ADMIN),
    "AddPermission": Action(Actions.add_permission, Access.ADMIN),
    "RemovePermission": Action(Actions.remove_permission, Access.ADMIN),
}
