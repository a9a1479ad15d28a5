"""The Amazon SQS API on Katar's port and store (docs/sqs.md): a front beside the HTTP one
(katar.http), on the engine's public operations only.

:class:`Front` answers one request; the server builds it and the HTTP app routes ``POST /``
to it.
"""

from katar.sqs.front import ACCOUNT_ID, Front

__all__ = ["ACCOUNT_ID", "Front"]
