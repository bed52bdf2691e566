"""Streaming of a top-level JSON object, one value in memory at a time (for MPtrj's 11 GB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from matscale.errors import DataError

#: Largest JSON value (one material's frames) the streaming MPtrj reader holds, in characters.
MAX_JSON_VALUE = 1 << 28


def iter_json_object(path: str, chunk: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """Yield the (key, value) pairs of a top-level JSON object, one value in memory at a time."""
    decoder = json.JSONDecoder()
    try:
        yield from _iter_pairs(path, decoder, chunk)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from exc


def _iter_pairs(path: str, decoder: json.JSONDecoder, chunk: int) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        buf = fh.read(chunk)
        pos = _skip_ws(buf, 0)
        if pos >= len(buf) or buf[pos] != "{":
            raise DataError("not a JSON object", file=path)
        pos += 1
        n = 0
        while True:
            # Parse `"key": value` followed by `,` or `}`; refill the buffer when a value is cut.
            while True:
                pos = _skip_ws(buf, pos)  # start of this pair; kept if the buffer is refilled
                try:
                    if buf[pos] == "}":
                        return
                    key, p = decoder.raw_decode(buf, pos)
                    p = _skip_ws(buf, p)
                    if buf[p] != ":":
                        raise DataError("expected ':' after key", file=path, record=n)
                    value, end = decoder.raw_decode(buf, _skip_ws(buf, p + 1))
                    end = _skip_ws(buf, end)
                    if buf[end] not in ",}":
                        raise json.JSONDecodeError("expected ',' or '}'", buf, end)
                    break
                except (json.JSONDecodeError, IndexError) as exc:
                    more = fh.read(chunk)
                    if not more:
                        raise DataError(
                            f"malformed or truncated JSON ({exc})", file=path, record=n
                        ) from exc
                    buf = buf[pos:] + more
                    pos = 0
                    if len(buf) > MAX_JSON_VALUE:  # malformed mid-file: don't read it all in
                        raise DataError(
                            f"no parsable value in {MAX_JSON_VALUE >> 20} MiB ({exc})",
                            file=path,
                            record=n,
                        ) from exc
            yield str(key), value
            n += 1
            if buf[end] == "}":
                return
            pos = end + 1  # the buffer is compacted only when it is refilled


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos
