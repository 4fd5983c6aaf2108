"""pyfs/format/keys.py keeps its promises: keys round-trip and sort as tuples.

Promises proven here (from the module docstring):
- `decode_key(encode_key(k)) == k` for tuples of signed 64-bit ints, strs
  and bytes;
- `encode_key(a) < encode_key(b)` iff `a < b` for comparable tuples, and a
  tuple sorts before every longer tuple it is a prefix of;
- `prefix_end(p)` bounds exactly the keys that start with `p`;
- unsupported elements and overlong keys raise ValueError; `decode_key`
  raises FormatError, and nothing else, for any bytes that are not a key.

Strings: a str element must be valid unicode (no lone surrogates, so no
`os.fsdecode` escapes); arbitrary names belong in bytes elements.  A str
that cannot keep both promises is refused with ValueError, never stored
under an encoding it shares with another key.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyfs.format.errors import FormatError
from pyfs.format.keys import MAX_KEY_BYTES, decode_key, encode_key, key_successor, prefix_end

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
# st.text() leaves out surrogates; NUL and every other code point are in.
TEXT = st.text(max_size=20)
BLOB = st.binary(max_size=20)
# Small ints and short strings make equal elements, and so prefix ties, common.
SMALL_INT = st.one_of(st.integers(-3, 3), INT64)
SMALL_TEXT = st.one_of(st.text(alphabet="a\x00\x7f\u00e9\U0001f600", max_size=3), TEXT)
SMALL_BLOB = st.one_of(st.binary(max_size=3).map(lambda b: b.replace(b"\x01", b"\x00")), BLOB)
BY_KIND = {int: SMALL_INT, str: SMALL_TEXT, bytes: SMALL_BLOB}

ELEMENT = st.one_of(INT64, TEXT, BLOB)
KEY = st.lists(ELEMENT, max_size=6).map(tuple)
# A str standing for an undecodable byte of a file name (U+DC80..U+DCFF).
ESCAPED_BYTE = st.integers(0x80, 0xFF).map(lambda b: chr(0xDC00 + b))


@st.composite
def comparable_pair(draw):
    """Two tuples that Python can compare: the same element type at each shared position."""
    shape = draw(st.lists(st.sampled_from([int, str, bytes]), max_size=5))
    a = tuple(draw(BY_KIND[t]) for t in shape[: draw(st.integers(0, len(shape)))])
    b = tuple(draw(BY_KIND[t]) for t in shape[: draw(st.integers(0, len(shape)))])
    if draw(st.booleans()):
        n = draw(st.integers(0, min(len(a), len(b))))
        b = a[:n] + b[n:]  # share a prefix
    return a, b


# -- round trip ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(KEY)
def test_decode_of_encode_gives_back_every_key_of_ints_strs_and_bytes(key):
    assert decode_key(encode_key(key)) == key


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=30), min_size=1, max_size=4))
def test_file_names_round_trip_as_bytes_and_as_strs_only_when_valid_utf8(names):
    assert decode_key(encode_key(tuple(names))) == tuple(names)
    as_strs = tuple(os.fsdecode(n) for n in names)
    try:
        encoded = encode_key(as_strs)
    except ValueError:
        assert any("\udc80" <= ch <= "\udcff" for name in as_strs for ch in name)
        return
    assert decode_key(encoded) == as_strs


@pytest.mark.parametrize("text", ["\ud800", "\udcff", "a\udc80b", "\udcc3\udca9"], ids=ascii)
def test_a_str_with_a_lone_surrogate_is_refused_with_value_error(text):
    with pytest.raises(ValueError):
        encode_key((1, text))


def test_bytearray_elements_decode_as_bytes():
    assert decode_key(encode_key((bytearray(b"x\x00y"),))) == (b"x\x00y",)


def test_integer_range_ends_round_trip():
    key = (-(1 << 63), (1 << 63) - 1, 0, -1)
    assert decode_key(encode_key(key)) == key


def test_empty_key_encodes_to_nothing():
    assert encode_key(()) == b""
    assert decode_key(b"") == ()


@settings(max_examples=150, deadline=None)
@example("\udcc3\udca9")  # the UTF-8 bytes of "é", escaped one by one
@example("\ud800")
@given(st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"]), ESCAPED_BYTE), max_size=6))
def test_any_str_either_round_trips_or_is_refused(text):
    """A str with surrogates is a key only if it comes back unchanged.

    Otherwise two different keys share one encoding and overwrite each other
    in a btree.
    """
    try:
        encoded = encode_key((text,))
    except ValueError:
        return
    assert decode_key(encoded) == (text,)


# -- order -----------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(comparable_pair())
def test_encoded_order_is_tuple_order(pair):
    a, b = pair
    ea, eb = encode_key(a), encode_key(b)
    assert (ea < eb) == (a < b)
    assert (ea == eb) == (a == b)


@settings(max_examples=200, deadline=None)
@given(KEY, st.lists(ELEMENT, min_size=1, max_size=3).map(tuple))
def test_a_prefix_sorts_before_every_key_that_extends_it(prefix, rest):
    assert encode_key(prefix) < encode_key(prefix + rest)


ANY_STR = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"]), ESCAPED_BYTE), max_size=4)


@settings(max_examples=150, deadline=None)
@example("\udc80", "\u0100")  # byte 0x80 as os.fsdecode escapes it, and a two-byte character
@example("\uffff", "\U00010000")
@given(ANY_STR, ANY_STR)
def test_any_two_strs_that_encode_keep_code_point_order(a, b):
    try:
        ea, eb = encode_key((a,)), encode_key((b,))
    except ValueError:
        return
    assert (ea < eb) == (a < b)


def test_kinds_sort_ints_then_strs_then_bytes_at_one_position():
    assert encode_key(((1 << 63) - 1,)) < encode_key(("",)) < encode_key((b"",))
    assert encode_key((7, "\U0010ffff")) < encode_key((7, b""))


def test_key_successor_is_the_next_possible_key():
    k = encode_key((5, "a"))
    succ = key_successor(k)
    assert k < succ < encode_key((5, "a", -(1 << 63))) < encode_key((5, "a\x00"))


# -- prefix_end ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(KEY, st.lists(ELEMENT, max_size=3).map(tuple))
def test_prefix_end_is_above_every_key_that_starts_with_the_prefix(prefix, rest):
    assert encode_key(prefix) <= encode_key(prefix + rest) < prefix_end(prefix)


@settings(max_examples=150, deadline=None)
@given(comparable_pair(), st.lists(ELEMENT, max_size=2).map(tuple))
def test_prefix_end_is_below_every_key_under_a_greater_prefix_of_the_same_shape(pair, rest):
    p, q = pair
    if len(q) < len(p):
        return
    q_prefix = q[: len(p)]
    if q_prefix > p:
        assert prefix_end(p) <= encode_key(q + rest)
    elif q_prefix < p:
        assert encode_key(q + rest) < encode_key(p)


def test_prefix_end_of_the_empty_prefix_is_above_every_key():
    assert encode_key((b"\xff" * 100,)) < prefix_end(())


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "element",
    [True, False, 1.0, float("nan"), None, 1j, [1], (1,), {"a": 1}, 1 << 63, -(1 << 63) - 1, 10**30],
    ids=repr,
)
def test_unsupported_or_out_of_range_elements_raise_value_error(element):
    with pytest.raises(ValueError):
        encode_key((element,))


def test_a_key_of_max_bytes_is_accepted_and_one_byte_more_is_not():
    # one bytes element costs a tag and a two-byte terminator
    at_limit = (b"x" * (MAX_KEY_BYTES - 3),)
    assert len(encode_key(at_limit)) == MAX_KEY_BYTES
    with pytest.raises(ValueError):
        encode_key((b"x" * (MAX_KEY_BYTES - 2),))
    with pytest.raises(ValueError):
        encode_key(tuple(range(MAX_KEY_BYTES // 9 + 1)))


@settings(max_examples=150, deadline=None)
@example(b"\x10\x00")
@example(b"\x20abc")
@example(b"\x30a\x00\x01")
@example(b"\x20\xff\xfe\x00\x00")
@given(st.one_of(st.binary(max_size=40), KEY.map(encode_key).flatmap(lambda e: st.just(e[:-1]) if e else st.just(e))))
def test_decode_key_of_garbage_raises_format_error_and_nothing_else(data):
    try:
        key = decode_key(data)
    except FormatError as exc:
        assert exc.errno is not None
        return
    # What decodes is canonical: it is the encoding of what it decodes to.
    if len(data) <= MAX_KEY_BYTES:
        assert encode_key(key) == data


@settings(max_examples=150, deadline=None)
@given(KEY, st.data())
def test_a_truncated_key_never_decodes_silently_to_a_different_key(key, data):
    encoded = encode_key(key)
    cut = data.draw(st.integers(0, max(0, len(encoded) - 1)))
    try:
        decoded = decode_key(encoded[:cut])
    except FormatError:
        return
    # Only a cut at an element boundary decodes, and then to a prefix of the key.
    assert decoded == key[: len(decoded)]
