"""Cluster slot routing, the same CRC16 that redis-py and the server use (binascii.crc_hqx)."""

from __future__ import annotations

from binascii import crc_hqx

SLOT_COUNT = 16384


def key_slot(key: bytes) -> int:
    """The hash slot of a key, honouring {hash tags}."""
    if b"{" not in key:
        return crc_hqx(key, 0) % SLOT_COUNT
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc_hqx(key, 0) % SLOT_COUNT
