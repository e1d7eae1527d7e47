"""Hypothesis strategies for request messages, built from the proto descriptors and written as
raw wire bytes, so they can hold what the generated classes refuse to build: unknown enum
values, invalid UTF-8 in string fields, unknown field numbers, truncated encodings, and
repeated fields with tens of thousands of items (still under the message limit)."""

from __future__ import annotations

import struct
from collections.abc import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from tests.fuzz.images import image_bytes

# Deeper messages are sent empty: the request types nest at most three levels.
MAX_DEPTH = 3
# Huge repeated fields: this many short items is ~300 KB, under every daemon's message limit.
HUGE_REPEATED = 40_000

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_F = FieldDescriptor
_INT_RANGES = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_BOOL: (0, 1),
}
# Names and ids as clients get them wrong: path tricks, key separators, NUL, huge, blank.
_NASTY_TEXT = [
    "",
    " ",
    "a:b",
    "cam1:cars",
    "../../../etc/passwd",
    "/",
    "x\x00y",
    "\u202e\u0000",
    "champion",
    "latest",
    "a" * 10_000,
    "🚗" * 300,
    "%s%n",
    "1",
    "-1",
]


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, _LEN) + varint(len(payload)) + payload


def text_bytes() -> st.SearchStrategy[bytes]:
    """UTF-8 text, nasty ids, and raw bytes that are mostly not UTF-8."""
    text = st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass"))
    ids = st.from_regex(r"[a-z][a-z0-9-]{0,20}(:[0-9]{1,3})?", fullmatch=True).map(str.encode)
    nasty = st.sampled_from(_NASTY_TEXT).map(lambda s: s.encode("utf-8"))
    # Mostly valid: a message with any invalid string stops at the parser, so the handlers
    # behind it see the valid ones.
    invalid = st.one_of(
        st.binary(min_size=1, max_size=40),
        st.sampled_from([b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80", b"\x80abc"]),
    )
    return st.one_of(text, ids, ids, nasty, text, ids, invalid)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[bytes]:
    """One occurrence of a non-message field, tag included."""
    number, kind = field.number, field.type
    if kind == _F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        values = st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
        return values.map(lambda v: tag(number, _VARINT) + varint(v))
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        ints = st.one_of(st.integers(low, high), st.sampled_from([0, 1, -1 if low < 0 else 2, low, high]))
        if kind in (_F.TYPE_SINT32, _F.TYPE_SINT64):
            return ints.map(lambda v: tag(number, _VARINT) + varint((v << 1) ^ (v >> 63)))
        return ints.map(lambda v: tag(number, _VARINT) + varint(v))
    if kind in (_F.TYPE_FLOAT, _F.TYPE_FIXED32, _F.TYPE_SFIXED32):
        floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
        return floats.map(lambda v: tag(number, _I32) + struct.pack("<f", v))
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FIXED64, _F.TYPE_SFIXED64):
        return st.floats(allow_nan=True, allow_infinity=True).map(lambda v: tag(number, _I64) + struct.pack("<d", v))
    if kind == _F.TYPE_STRING:
        return text_bytes().map(lambda b: length_delimited(number, b))
    if kind == _F.TYPE_BYTES:
        payload = image_bytes() if field.name in ("image", "data", "chunk", "content") else st.binary(max_size=256)
        return payload.map(lambda b: length_delimited(number, b))
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[bytes]:
    if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
        one = message(field.message_type, depth + 1).map(lambda b: length_delimited(field.number, b))
    else:
        one = _scalar(field)
    if not _is_repeated(field):
        return one
    few = st.lists(one, max_size=4).map(b"".join)
    # Many copies of one item: a huge repeated field costs the generator nothing.
    huge = st.tuples(one, st.integers(1_000, HUGE_REPEATED)).map(lambda pair: pair[0] * _copies(*pair))
    return st.one_of(few, few, few, huge)


def _copies(item: bytes, wanted: int) -> int:
    # Big items (images) are repeated fewer times: the whole message stays under ~1 MB.
    return max(1, min(wanted, 1_000_000 // max(1, len(item))))


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == _F.LABEL_REPEATED


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """Wire bytes of ``descriptor``: any subset of its fields, in any order, sometimes with an
    unknown field or a truncated tail."""
    if depth >= MAX_DEPTH or not descriptor.fields:
        return st.just(b"")
    parts = st.lists(st.one_of(*(_field(f, depth) for f in descriptor.fields)), max_size=len(descriptor.fields) + 2)
    body = parts.map(b"".join)
    unknown = st.tuples(st.integers(1000, 5000), st.binary(max_size=8)).map(lambda p: length_delimited(*p))
    return st.one_of(
        body,
        body,
        body,
        st.tuples(body, unknown).map(b"".join),
        st.tuples(body, st.integers(1, 8)).map(lambda p: p[0][: -p[1]] if len(p[0]) > p[1] else p[0]),
    )


def override(descriptor: Descriptor, path: str, value: str) -> bytes:
    """Wire bytes that set the string at ``path`` (``spec.uri``) to ``value`` when appended to a
    message: the last occurrence of a field wins and sub-messages merge, so this makes a fuzzed
    request fail fast (a missing path, an unknown snapshot) whatever else it holds."""
    name, _, rest = path.partition(".")
    field = descriptor.fields_by_name[name]
    if rest:
        return length_delimited(field.number, override(field.message_type, rest, value))
    return length_delimited(field.number, value.encode("utf-8"))


RequestFix = Callable[[bytes], bytes]
