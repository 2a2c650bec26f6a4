"""What a DUMP payload says about itself, without decoding it.

A payload is: the RDB object type (1 byte), the encoded value, then a 10-byte footer: the RDB
version (2 bytes, little-endian) and a CRC64 (8 bytes). A server RESTOREs only payloads of its own
RDB version or older; two servers dump the same value with different footers.
"""

from __future__ import annotations

FOOTER_BYTES = 10  # RDB version (2 bytes) + CRC64 (8 bytes); the batch script in datapath/reader.py reads it inline
MIN_PAYLOAD = FOOTER_BYTES

# RDB object type (a payload's first byte) -> Redis type
OBJECT_TYPES = {0: "string", 1: "list", 10: "list", 14: "list", 18: "list", 2: "set", 11: "set", 20: "set",
                3: "zset", 5: "zset", 12: "zset", 17: "zset", 4: "hash", 9: "hash", 13: "hash", 16: "hash",
                22: "hash", 23: "hash", 24: "hash", 25: "hash", 15: "stream", 19: "stream", 21: "stream"}
MODULE_OBJECT_TYPES = (6, 7)  # module values: only a server with the same module can RESTORE them


def rdb_version_of(payload: bytes) -> int:
    """The RDB version in the payload's footer."""
    if len(payload) < FOOTER_BYTES:
        raise ValueError("DUMP payload too short")
    return int.from_bytes(payload[-FOOTER_BYTES:-FOOTER_BYTES + 2], "little")


def payload_body(payload: bytes) -> bytes:
    """The payload without its footer: equal bodies are equal values, whichever server dumped them."""
    return payload[:-FOOTER_BYTES]


def payload_type(payload: bytes) -> str:
    """The Redis type of a payload, "other" for a module value (or an unknown encoding)."""
    return OBJECT_TYPES.get(payload[0], "other") if payload else "other"


def is_module_value(payload: bytes) -> bool:
    return bool(payload) and payload[0] in MODULE_OBJECT_TYPES
