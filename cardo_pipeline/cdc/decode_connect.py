"""Kafka Connect field schemas -> Arrow: one small decoder per Connect (logical) type, vectorised per column.

What belongs here: how a column value written by Debezium's JsonConverter (with schemas) becomes Arrow,
decided by the field's schema in the message: which JSON type `pyarrow.json` should read it as, which Arrow
type it means by itself, which column types it may land in without loss, and the column-at-a-time conversion.
Converters raise (ValueError / ArrowInvalid) on the first bad value; `decode` pinpoints the bad rows.
Envelope handling, grouping and dead letters live in `cardo_pipeline.cdc.decode`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from cardo_pipeline.cdc.arrow_types import MAX_DECIMAL128_PRECISION, UTC_MICROS, is_lossless_widening

UNAVAILABLE_VALUE = "__debezium_unavailable_value"
# In a bytes field (bytea, Decimal) Debezium puts the placeholder's UTF-8 bytes, so JSON shows their base64.
UNAVAILABLE_VALUE_BASE64 = base64.b64encode(UNAVAILABLE_VALUE.encode()).decode()

Converter = Callable[[pa.Array, pa.DataType], pa.Array]  # (parsed column, target type) -> converted column


class UnsupportedConnectType(ValueError):
    """A field schema this decoder has no mapping for (struct, array, map columns, unknown primitives)."""


@dataclass(frozen=True)
class FieldDecoder:
    """How one Connect field decodes. `describe` names it in dead-letter reasons."""

    describe: str
    parse_type: pa.DataType  # what pyarrow.json reads the JSON value as
    natural_type: pa.DataType  # the Arrow type of the value by itself: an evolved column gets this type
    convert: Converter
    toast_marker: str | None  # how the unchanged-TOAST placeholder looks in this field's JSON, if it can
    value_checked: Callable[[pa.DataType], bool] | None = None  # extra targets allowed when each value fits

    def accepts(self, target: pa.DataType) -> bool:
        """May this field land in a `target` column? Lossless widening, or a narrowing checked per value."""
        if is_lossless_widening(self.natural_type, target):
            return True
        return self.value_checked is not None and self.value_checked(target)


# --- converters: one per kind of Connect value --------------------------------------------------------------

def _cast(parsed: pa.Array, target: pa.DataType) -> pa.Array:
    return parsed if parsed.type == target else parsed.cast(target)  # safe cast: overflow, truncation raise


def _via(intermediate: pa.DataType) -> Converter:
    """Reinterpret the parsed integers as `intermediate` (epoch days, ms, us...), then cast to the target."""

    def convert(parsed: pa.Array, target: pa.DataType) -> pa.Array:
        return _cast(parsed.cast(intermediate), target)

    return convert


# ZonedTimestamp: ISO-8601 with an offset. Arrow's cast parses up to six fraction digits; this regex is the
# full contract (what Arrow accepts plus up to nine digits), used when Arrow refuses a column.
_ZONED = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?(Z|[+-]\d{2}(?::?\d{2})?)"
)
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (year 0 included, like Arrow)."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    month_days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if not (1 <= month <= 12 and 1 <= day <= month_days[month - 1]):
        raise ValueError("no such date")
    years = year - 1  # days before 1 January of `year`, counted from 0001-01-01, then shifted to 1970
    days = years * 365 + years // 4 - years // 100 + years // 400
    days += _DAYS_BEFORE_MONTH[month - 1] + (1 if leap and month > 2 else 0) + day - 1
    return days - 719162


def parse_zoned_timestamp(text: str) -> int:
    """Microseconds since the epoch of an io.debezium.time.ZonedTimestamp string (exact, or ValueError)."""
    match = _ZONED.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ISO-8601 timestamp with a zone offset: {text!r}")
    year, month, day, hour = (int(match.group(i)) for i in range(1, 5))
    minute, second = int(match.group(5) or 0), int(match.group(6) or 0)
    fraction, zone = match.group(7) or "", match.group(8)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"no such time of day: {text!r}")
    nanos = int(fraction.ljust(9, "0"))
    if nanos % 1000:
        raise ValueError(f"sub-microsecond digits would be lost: {text!r}")
    offset_minutes = 0
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        offset_hours, offset_mins = int(digits[:2]), int(digits[2:] or 0)
        if offset_hours > 23 or offset_mins > 59:
            raise ValueError(f"no such zone offset: {text!r}")
        offset_minutes = (offset_hours * 60 + offset_mins) * (-1 if zone[0] == "-" else 1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_minutes * 60) * 1_000_000 + nanos // 1000


def _zoned_timestamp(parsed: pa.Array, target: pa.DataType) -> pa.Array:
    try:
        decoded = parsed.cast(UTC_MICROS)  # the fast path: Arrow's ISO-8601 parser, six digits at most
    except pa.ArrowInvalid:
        micros = [None if text is None else parse_zoned_timestamp(text) for text in parsed.to_pylist()]
        decoded = pa.array(micros, pa.int64()).cast(UTC_MICROS)
    return _cast(decoded, target)


# Decimal: base64 of the unscaled value, big-endian two's complement in the fewest bytes. Decoded in bulk, one
# numpy pass per distinct text length (amounts of a column mostly share one): characters -> sextets by lookup
# table -> bytes, then sign-extended into the 16-byte little-endian layout of Arrow's decimal128.
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PAD = 64
_SEXTETS = np.full(256, 255, np.uint8)
_SEXTETS[np.frombuffer(_BASE64_ALPHABET, np.uint8)] = np.arange(64, dtype=np.uint8)
_SEXTETS[ord("=")] = _PAD
_MAX_BASE64_CHARS = 24  # 16 bytes (128 bits) need 6 groups of 4 characters
_DECIMAL128_LIMIT = 10**MAX_DECIMAL128_PRECISION
_UNSCALED = pa.decimal128(MAX_DECIMAL128_PRECISION, 0)


def _string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n + 1) and data bytes of a string array."""
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], np.int32, count=n + 1, offset=strings.offset * 4)
    data_buffer = strings.buffers()[2]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return offsets, data


def _decode_base64_rows(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of equal-length padded base64 (m x L) -> (bytes m x 3L/4, padding count per row)."""
    sextets = _SEXTETS[chars]
    if (sextets == 255).any():
        raise ValueError("not base64 (a character outside the base64 alphabet)")
    length = chars.shape[1]
    is_pad = sextets == _PAD
    if is_pad[:, : length - 2].any() or (is_pad[:, length - 2] & ~is_pad[:, length - 1]).any():
        raise ValueError("not base64 (misplaced padding)")
    pads = is_pad[:, length - 2:].sum(axis=1)
    groups = np.where(is_pad, 0, sextets).reshape(len(chars), length // 4, 4)
    decoded = np.empty((len(chars), length // 4, 3), np.uint8)
    decoded[..., 0] = (groups[..., 0] << 2) | (groups[..., 1] >> 4)
    decoded[..., 1] = ((groups[..., 1] & 0x0F) << 4) | (groups[..., 2] >> 2)
    decoded[..., 2] = ((groups[..., 2] & 0x03) << 6) | groups[..., 3]
    return decoded.reshape(len(chars), -1), pads


def unscaled_decimal128(encoded: pa.Array) -> pa.Array:
    """Base64 two's-complement unscaled values -> decimal128(38, 0) of the same integers, nulls kept.

    Raises ValueError when a value is not padded base64 or needs more than 38 digits.
    """
    n = len(encoded)
    offsets, data = _string_buffers(encoded)
    rows = np.flatnonzero(encoded.is_valid().to_numpy(zero_copy_only=False)) if encoded.null_count else None
    lengths = np.diff(offsets) if rows is None else np.diff(offsets)[rows]
    rows = np.arange(n) if rows is None else rows
    little_endian = np.zeros((n, 16), np.uint8)  # null rows stay zero
    for length in np.flatnonzero(np.bincount(lengths, minlength=1)).tolist():
        if length < 4 or length % 4 or length > _MAX_BASE64_CHARS:
            raise ValueError(f"not base64 of at most 16 bytes ({length} characters)")
        of_length = rows if len(rows) and lengths[0] == length and (lengths == length).all() else rows[
            lengths == length]
        chars = data[offsets[of_length][:, None] + np.arange(length)]
        decoded, pads = _decode_base64_rows(chars)
        negative = decoded[:, 0] >= 0x80
        for pad in (0, 1, 2):
            subset = pads == pad
            if not subset.any():
                continue
            count = length // 4 * 3 - pad  # the value's bytes; above them in little-endian order: its sign
            if count > 16:
                raise ValueError("decimal needs more than 128 bits")
            target_rows = of_length[subset]
            little_endian[target_rows, :count] = decoded[subset, count - 1::-1]
            little_endian[target_rows, count:] = np.where(negative[subset], 0xFF, 0)[:, None]
            if count == 16:  # only 16-byte values can exceed 38 digits
                for row in target_rows.tolist():
                    value = int.from_bytes(little_endian[row].tobytes(), "little", signed=True)
                    if abs(value) >= _DECIMAL128_LIMIT:
                        raise ValueError("decimal has more than 38 digits")
    validity = encoded.is_valid().buffers()[1] if encoded.null_count else None
    return pa.Array.from_buffers(_UNSCALED, n, [validity, pa.py_buffer(little_endian)], encoded.null_count)


def _decimal(scale: int, precision: int | None) -> Converter:
    scaled_type = pa.decimal128(MAX_DECIMAL128_PRECISION, scale)
    fits_decimal128 = precision is not None and 0 < precision <= MAX_DECIMAL128_PRECISION
    declared = pa.decimal128(precision, scale) if fits_decimal128 else None

    def convert(parsed: pa.Array, target: pa.DataType) -> pa.Array:
        unscaled = unscaled_decimal128(parsed)
        # Same bytes, now read with the field's scale: decimal128 stores exactly the unscaled integer.
        values = pa.Array.from_buffers(scaled_type, len(unscaled), unscaled.buffers(), unscaled.null_count)
        try:
            if declared is not None:
                values = values.cast(declared)  # overflowing the message's own precision is bad data
            return _cast(values, target)
        except pa.ArrowInvalid as error:
            raise ValueError(f"decimal does not fit {declared or target}: {error}") from None

    return convert


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _base64_bytes(text: str) -> bytes:
    if not _BASE64.fullmatch(text):
        raise ValueError(f"not base64: {text[:60]!r}")
    return binascii.a2b_base64(text)


def _bytes(parsed: pa.Array, target: pa.DataType) -> pa.Array:
    values = [None if text is None else _base64_bytes(text) for text in parsed.to_pylist()]
    return _cast(pa.array(values, pa.binary()), target)


_EXACT = Context(prec=1000)  # the default context keeps 28 digits and would round silently


def _variable_scale_decimal(parsed: pa.Array, target: pa.DataType) -> pa.Array:
    """io.debezium.data.VariableScaleDecimal {scale, value}: rare (numeric without a precision): per value."""
    out: list[Any] = []
    for item in parsed.to_pylist():
        if item is None:
            out.append(None)
            continue
        if item["scale"] is None or item["value"] is None:
            raise ValueError(f"VariableScaleDecimal without scale or value: {item!r}")
        unscaled = int.from_bytes(_base64_bytes(item["value"]), "big", signed=True)
        value = Decimal(unscaled).scaleb(-item["scale"], context=_EXACT)
        if pa.types.is_decimal(target):
            quantized = value.quantize(Decimal(1).scaleb(-target.scale), context=_EXACT)
            if quantized != value or len(quantized.as_tuple().digits) > target.precision:
                raise ValueError(f"{value} does not fit decimal({target.precision},{target.scale})")
            out.append(quantized)
        else:
            out.append(str(value))
    return pa.array(out, target)


# --- the table of Connect types -----------------------------------------------------------------------------

_PRIMITIVES: dict[str, pa.DataType] = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "boolean": pa.bool_(), "string": pa.string(),
}


def _microsecond_target(target: pa.DataType) -> bool:
    """Nanosecond values may land in microsecond columns when each value is whole microseconds."""
    return (pa.types.is_timestamp(target) or pa.types.is_time(target)) and target.unit == "us"


def _decimal_target(target: pa.DataType) -> bool:
    return pa.types.is_decimal(target)


def _logical_decoder(
    name: str, base: str, parameters: Mapping[str, str], describe: str
) -> FieldDecoder | None:
    """The decoders of Connect's and Debezium's logical types (None: not one we know, decode by base type)."""
    if name == "org.apache.kafka.connect.data.Decimal" and base == "bytes":
        scale = int(parameters.get("scale", 0))
        precision_text = parameters.get("connect.decimal.precision")
        precision = int(precision_text) if precision_text is not None else None
        if not 0 <= scale <= MAX_DECIMAL128_PRECISION or not (precision is None or scale <= precision):
            raise ValueError(f"scale {scale} with precision {precision}")
        natural = pa.decimal128(min(precision or MAX_DECIMAL128_PRECISION, MAX_DECIMAL128_PRECISION), scale)

        def declared_scale_fits(target: pa.DataType) -> bool:  # no declared precision: check every value
            return precision is None and pa.types.is_decimal(target) and target.scale >= scale

        return FieldDecoder(describe, pa.string(), natural, _decimal(scale, precision),
                            UNAVAILABLE_VALUE_BASE64, declared_scale_fits)
    if name == "io.debezium.data.VariableScaleDecimal" and base == "struct":
        parse = pa.struct([("scale", pa.int32()), ("value", pa.string())])
        return FieldDecoder(describe, parse, pa.string(), _variable_scale_decimal, None, _decimal_target)
    if name == "io.debezium.time.Date" and base == "int32":
        return FieldDecoder(describe, pa.int32(), pa.date32(), _via(pa.date32()), None)
    timestamps = {
        "io.debezium.time.Timestamp": ("int64", pa.timestamp("ms"), pa.timestamp("us")),
        "org.apache.kafka.connect.data.Timestamp": ("int64", pa.timestamp("ms"), pa.timestamp("us")),
        "io.debezium.time.MicroTimestamp": ("int64", pa.timestamp("us"), pa.timestamp("us")),
        "io.debezium.time.NanoTimestamp": ("int64", pa.timestamp("ns"), pa.timestamp("ns")),
        "io.debezium.time.Time": ("int32", pa.time32("ms"), pa.time64("us")),
        "org.apache.kafka.connect.data.Time": ("int32", pa.time32("ms"), pa.time64("us")),
        "io.debezium.time.MicroTime": ("int64", pa.time64("us"), pa.time64("us")),
        "io.debezium.time.NanoTime": ("int64", pa.time64("ns"), pa.time64("ns")),
    }
    if name in timestamps and timestamps[name][0] == base:
        _, epoch_type, natural = timestamps[name]
        value_checked = _microsecond_target if epoch_type.unit == "ns" else None
        return FieldDecoder(describe, _PRIMITIVES[base], natural, _via(epoch_type), None, value_checked)
    if name == "org.apache.kafka.connect.data.Date" and base == "int32":
        return FieldDecoder(describe, pa.int32(), pa.date32(), _via(pa.date32()), None)
    if name == "io.debezium.time.ZonedTimestamp" and base == "string":
        return FieldDecoder(describe, pa.string(), UTC_MICROS, _zoned_timestamp, UNAVAILABLE_VALUE)
    return None


def field_decoder(field_schema: Mapping[str, Any]) -> FieldDecoder:
    """The decoder of one Connect field schema (an element of a struct's "fields")."""
    base = field_schema.get("type")
    name = field_schema.get("name")
    parameters = field_schema.get("parameters") or {}
    if not isinstance(base, str) or not isinstance(parameters, Mapping):
        raise UnsupportedConnectType(f"a malformed field schema {field_schema!r}"[:200])
    describe = base if not name else f"{name} ({base}{_describe_parameters(parameters)})"
    try:
        logical = _logical_decoder(name, base, parameters, describe) if isinstance(name, str) else None
    except (ValueError, TypeError, ArithmeticError, pa.ArrowException):
        raise UnsupportedConnectType(f"{describe} with parameters out of range") from None
    if logical is not None:
        return logical
    if base in _PRIMITIVES:
        marker = UNAVAILABLE_VALUE if base == "string" else None  # io.debezium.data.Json, Enum, Uuid... too
        return FieldDecoder(describe, _PRIMITIVES[base], _PRIMITIVES[base], _cast, marker)
    if base == "bytes":
        return FieldDecoder(describe, pa.string(), pa.binary(), _bytes, UNAVAILABLE_VALUE_BASE64)
    raise UnsupportedConnectType(describe)


def _describe_parameters(parameters: Mapping[str, str]) -> str:
    shown = {"scale": "scale", "connect.decimal.precision": "precision"}
    parts = [f"{label} {parameters[key]}" for key, label in shown.items() if key in parameters]
    return ", " + ", ".join(parts) if parts else ""
