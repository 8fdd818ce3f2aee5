"""Hash-chained JSON Lines audit log: one record per decision, tamper-evident, fail closed.

Each line is one JSON object carrying ``prev`` (the ``hash`` of the record before it) and ``hash``
(SHA-256 over the canonical JSON of the record without ``hash``: sorted keys, compact separators,
UTF-8).  Editing, removing, reordering or inserting a record breaks the chain at a line that
:func:`verify` names; removing records from the *end* is only visible against a head hash that was
anchored elsewhere (``mcp-guard audit verify`` prints it).

``encoding`` makes the bytes (canonical JSON, hashes, record templates), ``log`` writes them,
``verify`` reads them back.
"""

from mcp_guard.audit.encoding import GENESIS, RecordTemplate, args_hash, canonical, parse_record, record_hash
from mcp_guard.audit.log import AuditLog
from mcp_guard.audit.verify import VerifyResult, format_record, iter_records, read_tail, rotated_set, verify

__all__ = [
    "GENESIS",
    "AuditLog",
    "RecordTemplate",
    "VerifyResult",
    "args_hash",
    "canonical",
    "format_record",
    "iter_records",
    "parse_record",
    "read_tail",
    "record_hash",
    "rotated_set",
    "verify",
]
