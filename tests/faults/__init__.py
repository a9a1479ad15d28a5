"""The fault suite: crashes, a frozen worker, a database outage, a full disk and a store that
fails inside a group commit, each against the real ``katar serve``. Every scenario checks
that nothing answered 201 is lost, that nothing acknowledged done is delivered again, and
that the server recovers by itself.

The PostgreSQL outage runs a private PostgreSQL 15 (as the user postgres, through runuser)
and the full disk mounts a tmpfs: both need root. Where the machine forbids them they skip
with the reason, except under KATAR_REQUIRE_FAULTS=1 (CI), where they fail.
"""
