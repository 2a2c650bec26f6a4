"""One script call per batch of keys: type, absolute expiry and (for a small value) the value itself.

The pipelined reads (readers.py) cost three commands per key, each built and parsed by the client:
TYPE, PEXPIRETIME and a first window. Here the server reads them for a whole batch in one read-only
script and the client parses one flat reply, [type code, expiry, value] per key, in C (hiredis).
A value is returned only when it is small (a string up to STRING_MAX bytes, a collection up to
ITEMS_MAX members) and within the batch's budgets; otherwise, and for streams and module types, the
value is nil and the key is read through the windowed path. Codes are digest.py's DIGEST_TYPE_CODE.

Every expiry is read before any value, as in the dump's scripts (PTTL's clock runs on in a script).
Where scripts are refused (ACL, an engine without them), the reader falls back to the pipelines.
"""

from __future__ import annotations

from functools import partial

from xxhash import xxh3_64_intdigest

from ..datapath.reader import _EXPIRIES, READ_ONLY_SHEBANG
from ..net.wire import pack
from .digest import DIGEST_TYPE_CODE, DIGEST_TYPES, digest_hash, digest_list, digest_set, digest_zset

STRING_MAX = 64 << 10     # bytes of a string returned whole
ITEMS_MAX = 999           # members of a collection returned whole (a first window is 1,000)
BYTES_BUDGET = 4 << 20    # string bytes per script call
ITEMS_BUDGET = 100_000    # collection members per script call

TYPE_REPLY = [name.encode() for name in DIGEST_TYPES]  # a type code as TYPE answers it

SCRIPT = b"""
local call = redis.call
local has_pexpiretime = ARGV[1] == '1'
local field_ttl = ARGV[2] == '1'
local string_max = tonumber(ARGV[3])
local items_max = tonumber(ARGV[4])
local bytes_left = tonumber(ARGV[5])
local items_left = tonumber(ARGV[6])
local argv = ARGV
local first = 7
""" + _EXPIRIES + b"""local codes = {string = 1, list = 2, set = 3, zset = 4, hash = 5, stream = 6}
local lengths = {set = 'SCARD', hash = 'HLEN'}
local out = {}
local n = 0
for i = first, #argv do
  local key = argv[i]
  local expiry = expiries[i]
  local kind = call('TYPE', key)['ok']
  local code = codes[kind] or 7
  local value = false
  if expiry == -2 or kind == 'none' then
    code = 0
  elseif kind == 'string' then
    if bytes_left > 0 then
      value = call('GETRANGE', key, 0, string_max)
      if #value > string_max then value = false else bytes_left = bytes_left - #value end
    end
  elseif code < 6 and items_left > 0 then
    local count
    if kind == 'list' then
      value = call('LRANGE', key, 0, items_max)
      count = #value
    elseif kind == 'zset' then
      value = call('ZRANGE', key, 0, items_max, 'WITHSCORES')
      count = #value / 2
    else
      count = call(lengths[kind], key)
      if count <= items_max then
        if kind == 'set' then
          value = call('SMEMBERS', key)
        else
          value = call('HGETALL', key)
          if field_ttl then
            local fields = {}
            for j = 1, #value, 2 do fields[#fields + 1] = value[j] end
            value = {value, call('HPEXPIRETIME', key, 'FIELDS', #fields, unpack(fields))}
          end
        end
      end
    end
    if count > items_max then value = false end
    if value then items_left = items_left - count end
  end
  out[n + 1] = code
  out[n + 2] = expiry
  out[n + 3] = value
  n = n + 3
end
return out
"""
# Redis 7+ and Valkey: declared read-only, so that it runs under CLIENT PAUSE WRITE; Redis 6.2 refuses the
# shebang, and the reader then uses SCRIPT as it is.
SCRIPT_NO_WRITES = READ_ONLY_SHEBANG + SCRIPT.lstrip(b"\n")
SCRIPTS = (SCRIPT_NO_WRITES, SCRIPT)


def call(script: bytes, keys: list[bytes], exact_ttl: bool, field_ttl: bool) -> bytes:
    """The script call for a batch of keys (EVAL: nothing to load first, and nothing to lose on a restart)."""
    return pack(b"EVAL", script, b"0", b"1" if exact_ttl else b"0", b"1" if field_ttl else b"0",
                b"%d" % STRING_MAX, b"%d" % ITEMS_MAX, b"%d" % BYTES_BUDGET, b"%d" % ITEMS_BUDGET, *keys)


def _hash_with_ttls(value: list) -> int:
    from .readers import with_field_ttls
    flat, ttls = value if value and isinstance(value[0], list) else (value, [])
    return digest_hash(with_field_ttls(flat, ttls))


def digesters(field_ttl: bool) -> tuple:
    """The one-shot digest of a whole small value, indexed by type code (strings in C: no Python frame)."""
    return (None, partial(xxh3_64_intdigest, seed=DIGEST_TYPE_CODE["string"]), digest_list, digest_set,
            digest_zset, _hash_with_ttls if field_ttl else digest_hash, None, None)
