"""Order-preserving key encoding.

Keys are tuples of ints (signed 64-bit), strs (valid unicode) and bytes.  They are stored as
bytes whose lexicographic order equals the tuple order, with ints < strs <
bytes at any one position and a tuple sorting before every longer tuple it
is a prefix of.  The btrees therefore compare plain bytes, and one tree may
hold keys of different shapes (the misc tree does).

Invariant: `decode_key(encode_key(k)) == k` and
`encode_key(a) < encode_key(b)` iff `a < b` (for comparable tuples).
"""

from __future__ import annotations

import struct

from .errors import FormatError

Key = tuple

_TAG_INT = 0x10
_TAG_STR = 0x20
_TAG_BYTES = 0x30
_INT_BIAS = 1 << 63
_INT = struct.Struct(">Q")
MAX_KEY_BYTES = 1024


def _escape(raw: bytes) -> bytes:
    # 0x00 becomes 0x00 0xff and the element ends with 0x00 0x00, so a
    # shorter element sorts before any element it is a prefix of.
    return raw.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def encode_key(key: Key) -> bytes:
    """The bytes form of `key`; raises ValueError for unsupported elements."""
    out = bytearray()
    for element in key:
        if isinstance(element, bool):
            raise ValueError("bool is not a key element")
        if isinstance(element, int):
            if not -_INT_BIAS <= element < _INT_BIAS:
                raise ValueError(f"key int out of range: {element}")
            out.append(_TAG_INT)
            out += _INT.pack(element + _INT_BIAS)
        elif isinstance(element, str):
            try:
                raw = element.encode("utf-8")
            except UnicodeEncodeError:
                # Lone surrogates have no UTF-8 form that sorts by code point;
                # arbitrary names belong in bytes elements.
                raise ValueError("key str is not valid unicode; use bytes") from None
            out.append(_TAG_STR)
            out += _escape(raw)
        elif isinstance(element, (bytes, bytearray)):
            out.append(_TAG_BYTES)
            out += _escape(bytes(element))
        else:
            raise ValueError(f"unsupported key element {element!r}")
    if len(out) > MAX_KEY_BYTES:
        raise ValueError(f"key longer than {MAX_KEY_BYTES} bytes")
    return bytes(out)


def _unescape(data: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        nul = data.find(b"\x00", pos)
        if nul < 0 or nul + 1 >= len(data):
            raise FormatError("key element not terminated")
        out += data[pos:nul]
        marker = data[nul + 1]
        if marker == 0x00:
            return bytes(out), nul + 2
        if marker != 0xFF:
            raise FormatError("bad escape in key")
        out.append(0)
        pos = nul + 2


def decode_key(data: bytes) -> Key:
    """The tuple that `encode_key` turned into `data`; FormatError if malformed."""
    items: list[object] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag == _TAG_INT:
            if pos + 8 > len(data):
                raise FormatError("truncated int in key")
            items.append(_INT.unpack_from(data, pos)[0] - _INT_BIAS)
            pos += 8
        elif tag == _TAG_STR:
            raw, pos = _unescape(data, pos)
            try:
                items.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise FormatError("key str is not UTF-8") from None
        elif tag == _TAG_BYTES:
            raw, pos = _unescape(data, pos)
            items.append(raw)
        else:
            raise FormatError(f"bad key tag {tag:#x}")
    return tuple(items)


def key_successor(encoded: bytes) -> bytes:
    """The smallest encoded key strictly greater than `encoded`."""
    return encoded + b"\x00"


def prefix_end(prefix: Key) -> bytes:
    """An upper bound (exclusive) for every key that starts with `prefix`."""
    return encode_key(prefix) + b"\xff"
