"""Parse an HTTP Range header into one byte span (RFC 9110 section 14), without I/O."""

from __future__ import annotations

from dataclasses import dataclass

from cachenode.errors import MalformedRange, RangeNotSatisfiable

MAX_HEADER_LEN = 256


@dataclass(frozen=True, slots=True)
class Span:
    """An inclusive byte span [start, end] of an object."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Return the number of bytes in the span."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """Return the Content-Range header value for this span."""
        return f"bytes {self.start}-{self.end}/{size}"


def _int(text: str, header: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        raise MalformedRange(header, f"{text!r} is not a byte position")
    return int(text)


def parse_range(header: str, size: int) -> Span:
    """Return the span a single-range header selects in an object of `size` bytes.

    A last-byte-pos past the end is clamped. Raises MalformedRange for syntax errors
    and multi-range requests, RangeNotSatisfiable when no byte of the range exists.
    """
    if len(header) > MAX_HEADER_LEN:
        raise MalformedRange(header[:32] + "...", "header too long")
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise MalformedRange(header, "only the 'bytes' unit is supported")
    if "," in spec:
        raise MalformedRange(header, "multiple ranges are not supported; send one range")
    first, dash, last = spec.strip().partition("-")
    if not dash:
        raise MalformedRange(header, "expected 'first-last', 'first-' or '-suffix'")
    first, last = first.strip(), last.strip()
    if not first:
        suffix = _int(last, header)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header, size)
        return Span(max(0, size - suffix), size - 1)
    start = _int(first, header)
    end = _int(last, header) if last else size - 1
    if last and end < start:
        raise MalformedRange(header, "last byte position is before the first")
    if start >= size:
        raise RangeNotSatisfiable(header, size)
    return Span(start, min(end, size - 1))
