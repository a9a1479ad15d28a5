"""The OpenAPI 3.1 document of Katar's HTTP interface, and a page that shows it to people.

Written by hand next to the routes, because the routes are raw ASGI; a test compares its
paths and methods with the application's route table, so neither can drift from the other.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import msgspec

from katar._version import __version__
from katar.core.model import MAX_DELAY, Interval, QueueOptions

if TYPE_CHECKING:
    from katar.http.app import Limits

JSON: Final = "application/json"
_INTERVAL: Final = msgspec.json.schema(Interval)


def _struct(kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON schema of a struct, with its constraints and defaults, without the
    docstring (written for programmers)."""
    _, components = msgspec.json.schema_components([kind])
    schema: dict[str, Any] = components[kind.__name__]
    return {
        k: v
        for k, v in schema.items()
        if k not in ("title", "description") and not (k == "required" and not v)
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _body(_ref("Error"), description)


QUEUE_PARAM: Final = {
    "name": "queue",
    "in": "path",
    "required": True,
    "description": "The queue's name: letters, digits, '.', '_', ':' or '-' (up to the "
    "server's max_queue_name, 128 by default).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]*$"},
}
ID_PARAM: Final = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The task's id.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
WAIT_PARAM: Final = {
    "name": "wait",
    "in": "query",
    "description": "Seconds to wait for the task to finish (up to the server's max_wait).",
    "schema": {"type": "number", "minimum": 0},
}

_STATUS: Final = {
    "type": "string",
    "enum": ["paused", "queued", "in progress", "done", "failed", "cancelled"],
}
_ANY_STATUS: Final = "|".join(_STATUS["enum"])
_PRIORITY: Final = {
    "description": "Higher runs first; high is 10, normal 0, low -10.",
    "oneOf": [
        {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
        {"type": "string", "enum": ["high", "normal", "low"]},
    ],
}
_TIME: Final = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What is wrong and what to send."},
            "ack": {"type": "integer", "description": "The index of the faulty ack."},
            "_id": {"type": "string"},
            "queue": {"type": "string"},
            "status": {"type": "string"},
        },
    },
    "Configuration": {
        "type": "object",
        "required": ["configuration"],
        "properties": {
            "configuration": {
                "type": "object",
                "description": "The queue's worker configuration over {interval: 30000}.",
                "required": ["interval"],
                "properties": {"interval": _INTERVAL},
                "additionalProperties": True,
            }
        },
    },
    "Ack": {
        "type": "object",
        "required": ["_id", "status"],
        "properties": {
            "_id": {"type": ["string", "integer"]},
            "status": {"type": "string", "enum": ["done", "failed", "in progress"]},
            "error": {"type": ["string", "null"]},
            "result": {"description": "With done: any JSON, kept with the task."},
            "attempt": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**31 - 1},
            "retry": {"type": ["boolean", "null"]},
        },
    },
    "Poll": {
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": _ref("Ack")},
            "max": {"type": "integer", "minimum": 0, "default": 1},
            "wait": {"type": "number", "minimum": 0, "default": 0},
            "worker": {"type": ["string", "null"], "maxLength": 200},
        },
    },
    "Deliveries": {
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["_id", "data", "attempt"],
                    "properties": {
                        "_id": {"type": "string"},
                        "data": {"description": "The producer's JSON, verbatim."},
                        "attempt": {"type": "integer", "minimum": 1},
                    },
                },
            }
        },
    },
    "QueueOptions": _struct(QueueOptions),
    "Queue": {
        "type": "object",
        "required": ["name", "options"],
        "properties": {
            "name": {"type": "string"},
            "options": _ref("QueueOptions"),
            "configuration": {"type": "object"},
            "counts": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Tasks by status.",
            },
        },
    },
    "NewTask": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"description": "Any JSON, null included."},
            "priority": _PRIORITY,
            "delay": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_DELAY,
                "description": "Seconds before the task may run (at most ten years).",
            },
            "run_at": {
                "type": "string",
                "format": "date-time",
                "description": "ISO 8601 time before which the task may not run, instead of"
                " delay (UTC when it names no zone; a past time means now).",
            },
            "status": {"type": "string", "enum": ["queued", "paused"], "default": "queued"},
        },
    },
    "Enqueue": {
        "oneOf": [
            _ref("NewTask"),
            {
                "type": "object",
                "required": ["tasks"],
                "properties": {"tasks": {"type": "array", "items": _ref("NewTask"), "minItems": 1}},
            },
        ]
    },
    "Task": {
        "type": "object",
        "required": ["_id", "queue", "status", "priority", "data", "attempts"],
        "properties": {
            "_id": {"type": "string"},
            "queue": {"type": "string"},
            "status": _STATUS,
            "priority": {"type": "integer"},
            "data": {},
            "attempts": {"type": "integer"},
            "error": {"type": ["string", "null"]},
            "result": {},
            "worker": {"type": ["string", "null"]},
            "created_at": _TIME,
            "updated_at": _TIME,
            "run_at": _TIME,
            "lease_expires_at": _TIME,
        },
    },
    "Tasks": {
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "items": _ref("Task")},
            "next": {
                "type": ["string", "null"],
                "description": "The cursor of the next page; a page may end early to keep "
                "its answer within the server's max_answer_bytes.",
            },
        },
    },
}

_QUEUE_MISSING: Final = {"404": _error("Queue not found.")}
_BAD_BODY: Final = {
    "400": _error("The body is not JSON."),
    "413": _error("The body is over the size limit."),
    "422": _error("A field is invalid; the message names it."),
}


_DENIED: Final = {
    "401": _error("No token, or one this server does not know (only when tokens are set)."),
    "403": _error("The token's role or queues do not allow this."),
}
_SLOW: Final = {"408": _error("The body did not arrive within the server's body_timeout.")}
_BUSY: Final = {"429": _error("The server holds its limit of long polls; retry shortly.")}
_BODY_METHODS: Final = ("post", "put", "patch")


def document(roles: dict[tuple[str, str], str | None], limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with these ``limits``; ``roles`` gives each
    (path, METHOD) the least role it needs when the server has tokens (None: open to all)."""
    doc = copy.deepcopy(_paths())
    schemas = doc["components"]["schemas"]
    schemas["Poll"]["properties"]["wait"]["maximum"] = limits.max_wait
    schemas["Enqueue"]["oneOf"][1]["properties"]["tasks"]["maxItems"] = limits.max_tasks_per_enqueue
    paths = doc["paths"]
    paths["/v1/queue/{queue}/tasks/{id}"]["get"]["parameters"][0]["schema"]["maximum"] = (
        limits.max_wait
    )
    for parameter in paths["/v1/queue/{queue}/tasks"]["get"]["parameters"]:
        if parameter["name"] == "limit":
            parameter["schema"]["maximum"] = limits.max_list
    for item in paths.values():
        for parameter in item.get("parameters", ()):
            if parameter["name"] == "queue":
                parameter["schema"]["maxLength"] = limits.max_queue_name
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            role = roles[(path, method.upper())]
            responses = operation["responses"]
            if role is None:
                operation["security"] = [{}]
            else:
                operation["x-katar-role"] = role
                operation["description"] = (
                    f"With tokens configured: a {role} token"
                    + ("" if role == "admin" else " (or a higher role)")
                    + (" whose queues include this one." if "{queue}" in path else ".")
                )
                responses.update(_DENIED)
            if method in _BODY_METHODS:
                responses.update(_SLOW)
            if operation["operationId"] == "poll":
                responses.update(_BUSY)
    return doc


def _paths() -> dict[str, Any]:
    queue_path = {
        "parameters": [QUEUE_PARAM],
        "get": {
            "summary": "The queue's worker configuration",
            "operationId": "getConfiguration",
            "tags": ["workers"],
            "responses": {
                "200": {
                    **_body(_ref("Configuration"), "The configuration."),
                    "headers": {
                        "Katar-Lease-Timeout": {
                            "description": "The queue's lease in ms.",
                            "schema": {"type": "integer"},
                        }
                    },
                },
                **_QUEUE_MISSING,
            },
        },
        "post": {
            "summary": "Apply acks, then take tasks (the worker's poll)",
            "operationId": "poll",
            "tags": ["workers"],
            "requestBody": _body(_ref("Poll"), "Acks and what to take. An empty body is {}."),
            "responses": {
                "200": _body(_ref("Deliveries"), "Tasks for this worker."),
                "204": {"description": "Nothing to take."},
                **_QUEUE_MISSING,
                "409": _error("An ack for a task never delivered; nothing was applied."),
                **_BAD_BODY,
            },
        },
        "put": {
            "summary": "Create a queue or replace its options",
            "operationId": "putQueue",
            "tags": ["operators"],
            "requestBody": _body(_ref("QueueOptions")),
            "responses": {"200": _body(_ref("Queue"), "The queue."), **_BAD_BODY},
        },
        "delete": {
            "summary": "Remove a queue and its tasks",
            "operationId": "deleteQueue",
            "tags": ["operators"],
            "responses": {
                "200": _body(
                    {
                        "type": "object",
                        "properties": {"deleted": {"type": "string"}, "tasks": {"type": "integer"}},
                    },
                    "Removed.",
                ),
                **_QUEUE_MISSING,
            },
        },
    }
    tasks_path = {
        "parameters": [QUEUE_PARAM],
        "post": {
            "summary": "Enqueue one task or many",
            "operationId": "enqueue",
            "tags": ["producers"],
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "description": (
                        "Makes a retry safe: a repeat with the same key on the same queue"
                        " within 24 hours creates nothing and answers what the first answered;"
                        " the same key with another body is a 422."
                    ),
                    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
                }
            ],
            "requestBody": {**_body(_ref("Enqueue")), "required": True},
            "responses": {
                "201": _body(_ref("Tasks"), "The new tasks."),
                **_QUEUE_MISSING,
                **_BAD_BODY,
                "503": _error("The store is unavailable: nothing was enqueued."),
                "504": _error(
                    "The store's connection was lost while it committed (outcome"
                    ' "unknown"): retry with the same Idempotency-Key.'
                ),
            },
        },
        "get": {
            "summary": "List tasks, paged by id",
            "operationId": "listTasks",
            "tags": ["producers"],
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "description": "One or more statuses, separated by commas.",
                    "schema": {
                        "type": "string",
                        "pattern": f"^({_ANY_STATUS})(,({_ANY_STATUS}))*$",
                    },
                },
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {
                    "name": "after",
                    "in": "query",
                    "description": "The cursor: the next page's tasks come after this id.",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                },
            ],
            "responses": {
                "200": _body(_ref("Tasks"), "A page."),
                **_QUEUE_MISSING,
                "422": _error("A bad parameter."),
            },
        },
    }
    task_path = {
        "parameters": [QUEUE_PARAM, ID_PARAM],
        "get": {
            "summary": "A task; with wait, once it finishes",
            "operationId": "getTask",
            "tags": ["producers"],
            "parameters": [WAIT_PARAM],
            "responses": {
                "200": _body(_ref("Task"), "The task."),
                "404": _error("No such queue or task."),
                "422": _error("A bad parameter."),
            },
        },
        "patch": {
            "summary": "Cancel, pause, resume or retry a task",
            "operationId": "patchTask",
            "tags": ["operators"],
            "requestBody": {
                "required": True,
                **_body(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {
                            "status": {
                                "type": "string",
                                "enum": ["cancelled", "paused", "queued"],
                            }
                        },
                    }
                ),
            },
            "responses": {
                "200": _body(_ref("Task"), "The task."),
                "404": _error("No such queue or task."),
                "409": _error("The task's status does not allow it."),
                **_BAD_BODY,
            },
        },
        "delete": {
            "summary": "Remove a task",
            "operationId": "deleteTask",
            "tags": ["operators"],
            "responses": {
                "200": _body(
                    {
                        "type": "object",
                        "properties": {"_id": {"type": "string"}, "deleted": {"type": "boolean"}},
                    },
                    "Removed.",
                ),
                "404": _error("No such queue or task."),
            },
        },
    }
    plain = {"200": {"description": "The document.", "content": {"text/html": {}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Katar",
            "version": __version__,
            "description": "An HTTP work-queue server. See docs/protocol.md for the rules.",
        },
        "tags": [
            {"name": "workers", "description": "The katar-worker-http protocol."},
            {"name": "producers", "description": "Putting tasks on queues, and watching them."},
            {"name": "operators", "description": "Queues and tasks, by hand."},
            {"name": "server", "description": "Health and documentation."},
        ],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Whether the server can reach its store",
                    "operationId": "health",
                    "tags": ["server"],
                    "responses": {
                        "200": _body({"type": "object"}, "Healthy."),
                        "503": _error("The store is unavailable, or the server is stopping."),
                    },
                }
            },
            "/v1/queues": {
                "get": {
                    "summary": "Every queue, with its options and task counts",
                    "operationId": "listQueues",
                    "tags": ["operators"],
                    "responses": {
                        "200": _body(
                            {
                                "type": "object",
                                "properties": {"queues": {"type": "array", "items": _ref("Queue")}},
                            },
                            "The queues.",
                        )
                    },
                }
            },
            "/v1/queue/{queue}": queue_path,
            "/v1/queue/{queue}/tasks": tasks_path,
            "/v1/queue/{queue}/tasks/{id}": task_path,
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "tags": ["server"],
                    "responses": {"200": _body({"type": "object"}, "The document.")},
                }
            },
            "/docs": {
                "get": {
                    "summary": "This document, as a page",
                    "operationId": "docs",
                    "tags": ["server"],
                    "responses": plain,
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Task counts, rates and requests, for Prometheus",
                    "operationId": "metrics",
                    "tags": ["server"],
                    "responses": {
                        "200": {
                            "description": "Prometheus's text format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `katar token`, declared in the server's "
                    "configuration file. A server with no tokens is open and ignores it.",
                }
            },
        },
        # Either a token, or none (a server without tokens).
        "security": [{"bearer": []}, {}],
    }


def page() -> bytes:
    """A self-contained page (no scripts from elsewhere: Katar often runs without Internet
    access) that fetches /openapi.json and lays out every route, its parameters, bodies and
    answers."""
    return resources.files("katar.http").joinpath("docs.html").read_bytes()
