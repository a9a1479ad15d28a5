"""The OpenAPI 3.1 document of Katar's HTTP interface, and a page that shows it to people.

Generated, not written: the bodies' and answers' schemas come from the wire model's types
(katar.protocol, through msgspec's JSON Schema), and the operations from the route table
(katar.http.routes), where each route states its summary, body and answers (an
:class:`~katar.http.routes.Operation`) beside its handler, access rule and use of the store.
What is left here is what neither holds: the path and query parameters, the answers every
guarded or body-reading route shares, and the bounds that come from the server's limits.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any, Final

import msgspec

from katar._version import __version__
from katar.core.model import Interval
from katar.http.auth import Access, Role
from katar.http.routes import (
    BODY_METHODS,
    ENQUEUE_BODY,
    JSON,
    QUEUE_PATCH_BODY,
    WRITE_METHODS,
    Answer,
    Operation,
    Route,
)
from katar.limits import Limits
from katar.protocol import Error, NewTaskBody

_SCHEMAS: Final = "#/components/schemas/{name}"
#: The document's names for the wire types whose Python names also say their side (a body, a
#: query, a task as delivered), apart from the engine's types of the same name in
#: katar.core.model: the document keeps the names clients generated from it use.
_DOCUMENT_NAMES: Final = {
    "NewTaskBody": "NewTask",
    "TaskFilterQuery": "TaskFilter",
    "DeliveredTask": "Delivery",
}


class Batch(msgspec.Struct, frozen=True):
    """Many tasks in one enqueue. The server decodes an enqueue as katar.protocol.Enqueue,
    one struct with the fields of both forms; the document shows them as the two they are."""

    tasks: list[NewTaskBody]


QUEUE_PARAM: Final[dict[str, Any]] = {
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
ASSET_PARAM: Final = {
    "name": "asset",
    "in": "path",
    "required": True,
    "description": "The file's name, as the dashboard's page names it.",
    "schema": {"type": "string"},
}
SCHEDULE_PARAM: Final = {
    "name": "schedule",
    "in": "path",
    "required": True,
    "description": "The schedule's name: letters, digits, '.', '_', ':' or '-' (up to 255).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]*$", "maxLength": 255},
}
_PATH_PARAMS: Final = {
    "{queue}": QUEUE_PARAM,
    "{id}": ID_PARAM,
    "{asset}": ASSET_PARAM,
    "{schedule}": SCHEDULE_PARAM,
}
_DENIED: Final = {
    401: "No token, or one this server does not know (only when tokens are set).",
    403: "The token's role or queues do not allow this.",
}
#: What refuses any request on a server without tokens, and a write from a browser's page of
#: another site on any server (docs/protocol.md, "Browsers and host names").
_OTHER_HOST: Final = "Without tokens: a Host this server does not answer."
_OTHER_SITE: Final = f"{_OTHER_HOST} A browser's request from another site's page."
_SLOW: Final = {408: "The body did not arrive within the server's body_timeout."}
_BAD_BODY: Final = {
    400: "The body is not JSON (or not UTF-8, or nested too deeply).",
    413: "The body is over the size limit.",
    422: "A field is invalid; the message names it.",
}
_UNAVAILABLE: Final = {
    503: "The store is unavailable, or the server is stopping: nothing was done."
}
_UNKNOWN: Final = {
    504: "The store's connection was lost while it committed: the outcome is unknown."
}


def _path_param(part: str, limits: Limits) -> dict[str, Any]:
    parameter = _PATH_PARAMS[part]
    if parameter is QUEUE_PARAM:
        return {**parameter, "schema": {**parameter["schema"], "maxLength": limits.max_queue_name}}
    return parameter


def _named(node: Any) -> Any:
    """``node`` (a schema) with the wire types' references and titles under their document
    names (_DOCUMENT_NAMES)."""
    if isinstance(node, list):
        return [_named(item) for item in node]
    if not isinstance(node, dict):
        return node
    named: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and value.startswith(_SCHEMAS.format(name="")):
            name = value.rpartition("/")[2]
            value = _SCHEMAS.format(name=_DOCUMENT_NAMES.get(name, name))
        elif key == "title" and isinstance(value, str):
            value = _DOCUMENT_NAMES.get(value, value)
        named[key] = _named(value)
    return named


def _references(node: Any) -> Iterator[str]:
    """The names of the components ``node`` refers to, in the document's order."""
    if isinstance(node, list):
        for item in node:
            yield from _references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rpartition("/")[2]
            else:
                yield from _references(value)


def _in_reference_order(roots: Iterable[str], schemas: dict[str, Any]) -> dict[str, Any]:
    """``schemas`` each after the first that refers to it, from ``roots`` in order, as the
    generator lists them: so a reference changed here (see _components) leaves the order,
    and the document's bytes, as they were. Schemas no root reaches keep their place."""
    ordered: dict[str, Any] = {}

    def visit(name: str) -> None:
        if name in ordered or name not in schemas:
            return
        ordered[name] = schemas[name]
        for reference in _references(schemas[name]):
            visit(reference)

    for root in roots:
        visit(root)
    return {**ordered, **schemas}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _SCHEMAS.format(name=name)}


def _schema(kind: Any, names: Mapping[Any, str]) -> dict[str, Any]:
    """The schema of a body: a reference to a component, or a schema given as is."""
    if isinstance(kind, dict):
        return kind
    if isinstance(kind, str):
        return _ref(kind)
    return _ref(names[kind])


def _types(operations: Iterable[Operation]) -> list[Any]:
    kinds: list[Any] = [Error, Batch]
    for operation in operations:
        candidates = [
            operation.body,
            *(a.body for a in operation.answers.values() if isinstance(a, Answer)),
        ]
        for kind in candidates:
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct) and kind not in kinds:
                kinds.append(kind)
    return kinds


@functools.lru_cache(maxsize=16)
def _components(kinds: tuple[Any, ...], limits: Limits) -> tuple[dict[Any, str], dict[str, Any]]:
    # Cached (read only): every app with the same limits has the same schemas, and making
    # them is most of the document's cost.
    _, generated = msgspec.json.schema_components(kinds, ref_template=_SCHEMAS)
    schemas = {_DOCUMENT_NAMES.get(n, n): _named(schema) for n, schema in generated.items()}
    names = {kind: _DOCUMENT_NAMES.get(kind.__name__, kind.__name__) for kind in kinds}
    # What a struct cannot say of itself: a new task's data has no default (its absence is
    # refused with a message of its own), delay and run_at exclude each other,
    # unique_for needs a unique_key, and a debounce_key its delay (and no unique_key).
    schemas["NewTask"]["required"] = ["data"]
    schemas["NewTask"]["not"] = {
        "required": ["delay", "run_at"],
        "properties": {"delay": {"type": "number"}, "run_at": {"type": "string"}},
    }
    schemas["NewTask"]["allOf"] = [
        {
            "not": {
                "required": ["unique_for"],
                "properties": {"unique_for": {"type": "number"}, "unique_key": {"type": "null"}},
            }
        },
        # A debounce_key needs a delay above 0 or a run_at, and goes with neither a
        # unique_key nor an after that names tasks (model.check_debounce).
        {
            "not": {
                "required": ["debounce_key"],
                "properties": {
                    "debounce_key": {"type": "string"},
                    "delay": {"not": {"type": "number", "exclusiveMinimum": 0}},
                    "run_at": {"type": "null"},
                },
            }
        },
        {
            "not": {
                "required": ["debounce_key", "unique_key"],
                "properties": {
                    "debounce_key": {"type": "string"},
                    "unique_key": {"type": "string"},
                },
            }
        },
        {
            "not": {
                "required": ["debounce_key", "after"],
                "properties": {
                    "debounce_key": {"type": "string"},
                    "after": {"type": "array", "minItems": 1},
                },
            }
        },
    ]
    schemas["Batch"]["properties"]["tasks"].update(
        minItems=1, maxItems=limits.max_tasks_per_enqueue
    )
    schemas[ENQUEUE_BODY] = {
        "description": "One task, or many under tasks (not both).",
        "oneOf": [_ref("NewTask"), _ref("Batch")],
    }
    schemas["Poll"]["properties"]["wait"]["maximum"] = limits.max_wait
    options = schemas.get("QueueOptions")
    if "QueueInfo" in schemas and options is not None:
        # The listing's options are plain data in the wire model (a client reads options it
        # does not know yet); what the server sends there is a QueueOptions.
        schemas["QueueInfo"]["properties"]["options"] = _ref("QueueOptions")
    if options is not None:
        # QueueOptions carries its own bounds; the keys of its configuration that Katar reads
        # are another struct's, which ignores the queue's own keys.
        options["properties"]["configuration"]["properties"] = {
            "interval": msgspec.json.schema(Interval)
        }
        schemas[QUEUE_PATCH_BODY] = {
            "description": "Some of a queue's options: those given replace the queue's, the"
            " others stay as they are; null removes a limit.",
            "type": "object",
            "properties": {
                name: {k: v for k, v in schema.items() if k != "default"}
                for name, schema in options["properties"].items()
            },
            "additionalProperties": False,
        }
    return names, _in_reference_order(names.values(), schemas)


def _answers(given: Mapping[int, Answer | str], names: Mapping[Any, str]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, answer in given.items():
        if isinstance(answer, str):
            answer = Answer(answer, Error if status >= 400 else None)
        shown: dict[str, Any] = {"description": answer.description}
        if answer.body is not None:
            shown["content"] = {answer.media: {"schema": _schema(answer.body, names)}}
        elif answer.media != JSON:
            shown["content"] = {answer.media: {}}
        if answer.headers:
            shown["headers"] = dict(answer.headers)
        answers[str(status)] = shown
    return answers


def document(routes: Iterable[tuple[str, Mapping[str, Route]]], limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with these ``routes`` (katar.http.routes.ROUTES)
    and ``limits``."""
    routes = list(routes)
    operations = [route.doc for _, methods in routes for route in methods.values()]
    names, schemas = _components(tuple(_types(operations)), limits)
    paths: dict[str, Any] = {}
    for path, methods in routes:
        item: dict[str, Any] = {}
        parameters = [_path_param(part, limits) for part in path.split("/") if part in _PATH_PARAMS]
        if parameters:
            item["parameters"] = parameters
        for method, route in methods.items():
            item[method.lower()] = _operation(path, method, route, names, limits)
        paths[path] = item
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
            {"name": "schedules", "description": "Tasks enqueued at the ticks of a cron."},
            {"name": "server", "description": "Health, documentation and the dashboard."},
            {
                "name": "sqs",
                "description": "The Amazon SQS API, for the AWS SDKs (docs/sqs.md); signed"
                " with AWS Signature Version 4, not with a bearer token.",
            },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
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


def _operation(
    path: str, method: str, route: Route, names: Mapping[Any, str], limits: Limits
) -> dict[str, Any]:
    doc: Operation = route.doc
    # The answers every route of a kind shares, under the route's own (which win).
    shared: dict[int, Answer | str] = {}
    shown: dict[str, Any] = {
        "summary": doc.summary,
        "operationId": doc.operation_id,
        "tags": [doc.tag],
    }
    if route.access is Access.OPEN:
        shown["security"] = [{}]
    else:
        role = Role(route.access.value).label
        shown["x-katar-role"] = role
        shown["description"] = (
            f"With tokens configured: a {role} token"
            + ("" if role == "admin" else " (or a higher role)")
            + (" whose queues include this one." if "{queue}" in path else ".")
        )
        shared.update(_DENIED)
    other = _OTHER_SITE if method in WRITE_METHODS else _OTHER_HOST
    shared[403] = f"{shared[403]} {other}" if 403 in shared else other
    if "{queue}" in path and method != "PUT":  # a PUT creates the queue it names
        shared[404] = "No such queue or task." if "{id}" in path else "No such queue."
    if "{schedule}" in path:  # a PUT creates the schedule, on a queue that must exist
        shared[404] = "No such queue." if method == "PUT" else "No such schedule."
    if method in BODY_METHODS:
        shared.update({**_BAD_BODY, **_SLOW})
        shown["requestBody"] = {
            "content": {JSON: {"schema": _schema(doc.body, names)}},
            **({"required": True} if doc.body_required else {}),
        }
    if route.store:
        shared.update(_UNAVAILABLE)
        if doc.writes:
            shared.update(_UNKNOWN)
    parameters = [dict(p) for p in doc.parameters]
    for parameter in parameters:
        if parameter["name"] == "wait":
            parameter["schema"] = {**parameter["schema"], "maximum": limits.max_wait}
        elif parameter["name"] == "limit":
            parameter["schema"] = {**parameter["schema"], "maximum": limits.max_list}
    if parameters:
        shown["parameters"] = parameters
    shown["responses"] = _answers(dict(sorted({**shared, **doc.answers}.items())), names)
    return shown


def page() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A self-contained page (no scripts from elsewhere: Katar often runs without Internet
    access) that fetches /openapi.json and lays out every route, its parameters, bodies and
    answers; and its headers. Its script and style are inline: the Content-Security-Policy
    allows those two by their hashes, and nothing else (as the dashboard's does, katar.ui)."""
    body = resources.files("katar.http").joinpath("docs.html").read_bytes()
    hashes = {
        tag: b"'sha256-%s'" % base64.b64encode(hashlib.sha256(inline).digest())
        for tag in (b"script", b"style")
        for inline in [body.split(b"<%s>" % tag, 1)[1].split(b"</%s>" % tag, 1)[0]]
    }
    policy = (
        b"default-src 'none'; connect-src 'self'; script-src %s; style-src %s; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        % (hashes[b"script"], hashes[b"style"])
    )
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"content-security-policy", policy),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    return body, headers
