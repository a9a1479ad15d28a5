"""The SQS API's errors: each with the shape name the AWS JSON 1.0 protocol answers in
``__type``, the code of the older query protocol (sent in the ``x-amzn-query-error`` header,
which the SDKs read as the error's code: botocore's model says ``awsQueryCompatible``), and
the HTTP status. Katar's own errors (katar/errors.py) map to them in one table,
:func:`from_katar`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from katar import errors


class Kind(NamedTuple):
    """One error of the SQS API: its JSON 1.0 shape, its query code, its status, and
    whether the sender is at fault ("Sender") or the server ("Receiver")."""

    shape: str
    code: str
    status: int = 400
    sender: bool = True


QUEUE_DOES_NOT_EXIST: Final = Kind("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue")
QUEUE_NAME_EXISTS: Final = Kind("QueueNameExists", "QueueAlreadyExists")
RECEIPT_HANDLE_IS_INVALID: Final = Kind("ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid")
MESSAGE_NOT_INFLIGHT: Final = Kind(
    "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight"
)
INVALID_ATTRIBUTE_NAME: Final = Kind("InvalidAttributeName", "InvalidAttributeName")
INVALID_ATTRIBUTE_VALUE: Final = Kind("InvalidAttributeValue", "InvalidAttributeValue")
INVALID_MESSAGE_CONTENTS: Final = Kind("InvalidMessageContents", "InvalidMessageContents")
EMPTY_BATCH: Final = Kind("EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest")
TOO_MANY_ENTRIES: Final = Kind(
    "TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
)
BATCH_IDS_NOT_DISTINCT: Final = Kind(
    "BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
)
INVALID_BATCH_ENTRY_ID: Final = Kind(
    "InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId"
)
BATCH_TOO_LONG: Final = Kind("BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong")
UNSUPPORTED_OPERATION: Final = Kind(
    "UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation"
)
RESOURCE_NOT_FOUND: Final = Kind("ResourceNotFoundException", "ResourceNotFoundException")
OVER_LIMIT: Final = Kind("OverLimit", "OverLimit", 403)
REQUEST_THROTTLED: Final = Kind("RequestThrottled", "RequestThrottled")
# The errors common to every AWS service: not in the SQS model, answered as SQS does.
INVALID_PARAMETER_VALUE: Final = Kind("InvalidParameterValue", "InvalidParameterValue")
MISSING_PARAMETER: Final = Kind("MissingParameter", "MissingParameter")
INVALID_ACTION: Final = Kind("InvalidAction", "InvalidAction")
MISSING_ACTION: Final = Kind("MissingAction", "MissingAction")
ACCESS_DENIED: Final = Kind("AccessDeniedException", "AccessDenied", 403)
INVALID_CLIENT_TOKEN_ID: Final = Kind("InvalidClientTokenId", "InvalidClientTokenId", 403)
MISSING_AUTHENTICATION_TOKEN: Final = Kind(
    "MissingAuthenticationTokenException", "MissingAuthenticationToken", 403
)
SIGNATURE_DOES_NOT_MATCH: Final = Kind("SignatureDoesNotMatch", "SignatureDoesNotMatch", 403)
REQUEST_EXPIRED: Final = Kind("RequestExpired", "RequestExpired", 403)
SERVICE_UNAVAILABLE: Final = Kind("ServiceUnavailable", "ServiceUnavailable", 503, sender=False)
INTERNAL_ERROR: Final = Kind("InternalError", "InternalError", 500, sender=False)


class SqsError(Exception):
    """An error the SQS front answers: its kind and a message that says what to fix."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> SqsError:
    """InvalidParameterValue: a parameter's value is out of its bounds or malformed."""
    return SqsError(INVALID_PARAMETER_VALUE, message)


def no_queue() -> SqsError:
    """The queue named does not exist (or the caller may not see it: the same answer)."""
    return SqsError(QUEUE_DOES_NOT_EXIST, "The specified queue does not exist.")


#: Katar's errors as the SQS API answers them, looked up along the class hierarchy.
_KIND_OF_ERROR: Final[dict[type[errors.KatarError], Kind]] = {
    errors.QueueNotFound: QUEUE_DOES_NOT_EXIST,
    errors.ValidationError: INVALID_PARAMETER_VALUE,
    errors.PayloadTooLarge: INVALID_PARAMETER_VALUE,
    errors.InvalidRequest: INVALID_PARAMETER_VALUE,
    errors.Forbidden: ACCESS_DENIED,
    errors.Unauthenticated: MISSING_AUTHENTICATION_TOKEN,
    errors.TooManyRequests: REQUEST_THROTTLED,
    errors.Conflict: INVALID_PARAMETER_VALUE,
    errors.NotFound: INVALID_PARAMETER_VALUE,
    errors.ShuttingDown: SERVICE_UNAVAILABLE,
    errors.StoreUnavailable: SERVICE_UNAVAILABLE,
}


def from_katar(exc: errors.KatarError) -> SqsError:
    """The SQS error that answers a Katar error."""
    for cls in type(exc).__mro__:
        kind = _KIND_OF_ERROR.get(cls)
        if kind is not None:
            message = (
                "The specified queue does not exist."
                if kind is QUEUE_DOES_NOT_EXIST
                else exc.message
            )
            return SqsError(kind, message)
    return SqsError(INTERNAL_ERROR, "internal server error; see the server's log")
