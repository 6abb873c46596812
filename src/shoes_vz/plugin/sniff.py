"""Go's `net/http.DetectContentType`, which myshoes applies to its `PLUGIN` file.

myshoes (pkg/config/init.go `checkBinary`) refuses the plugin unless the file sniffs as
`application/octet-stream`. This is a line-by-line port of golang/go:src/net/http/sniff.go (the
WHATWG MIME sniffing algorithm as Go implements it), signatures in Go's order, first match wins,
only the first 512 bytes looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SNIFF_LEN = 512
OCTET_STREAM = "application/octet-stream"
TEXT_PLAIN = "text/plain; charset=utf-8"

_WS = b"\t\n\x0c\r "
_TT = b" >"

Matcher = Callable[[bytes, int], str]


def _html(sig: bytes) -> Matcher:
    def match(data: bytes, first_non_ws: int) -> str:
        data = data[first_non_ws:]
        if len(data) < len(sig) + 1:
            return ""
        for i, b in enumerate(sig):
            db = data[i]
            if ord("A") <= b <= ord("Z"):
                db &= 0xDF
            if b != db:
                return ""
        if data[len(sig)] not in _TT:
            return ""
        return "text/html; charset=utf-8"

    return match


def _masked(mask: bytes, pat: bytes, ct: str, skip_ws: bool = False) -> Matcher:
    def match(data: bytes, first_non_ws: int) -> str:
        if skip_ws:
            data = data[first_non_ws:]
        if len(pat) != len(mask) or len(data) < len(pat):
            return ""
        for i, pb in enumerate(pat):
            if data[i] & mask[i] != pb:
                return ""
        return ct

    return match


def _exact(sig: bytes, ct: str) -> Matcher:
    def match(data: bytes, first_non_ws: int) -> str:
        return ct if data.startswith(sig) else ""

    return match


def _mp4(data: bytes, first_non_ws: int) -> str:
    if len(data) < 12:
        return ""
    box_size = int.from_bytes(data[:4], "big")
    if len(data) < box_size or box_size % 4 != 0:
        return ""
    if data[4:8] != b"ftyp":
        return ""
    for st in range(8, box_size, 4):
        if st == 12:  # skip the minor version number
            continue
        if data[st : st + 3] == b"mp4":
            return "video/mp4"
    return ""


def _text(data: bytes, first_non_ws: int) -> str:
    for b in data[first_non_ws:]:
        if b <= 0x08 or b == 0x0B or 0x0E <= b <= 0x1A or 0x1C <= b <= 0x1F:
            return ""
    return TEXT_PLAIN


_SIGNATURES: tuple[Matcher, ...] = (
    *(_html(s) for s in (
        b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1", b"<DIV", b"<FONT",
        b"<TABLE", b"<A", b"<STYLE", b"<TITLE", b"<B", b"<BODY", b"<BR", b"<P", b"<!--",
    )),
    _masked(b"\xff\xff\xff\xff\xff", b"<?xml", "text/xml; charset=utf-8", skip_ws=True),
    _exact(b"%PDF-", "application/pdf"),
    _exact(b"%!PS-Adobe-", "application/postscript"),
    # UTF BOMs
    _masked(b"\xff\xff\x00\x00", b"\xfe\xff\x00\x00", "text/plain; charset=utf-16be"),
    _masked(b"\xff\xff\x00\x00", b"\xff\xfe\x00\x00", "text/plain; charset=utf-16le"),
    _masked(b"\xff\xff\xff\x00", b"\xef\xbb\xbf\x00", "text/plain; charset=utf-8"),
    # images
    _exact(b"\x00\x00\x01\x00", "image/x-icon"),
    _exact(b"\x00\x00\x02\x00", "image/x-icon"),
    _exact(b"BM", "image/bmp"),
    _exact(b"GIF87a", "image/gif"),
    _exact(b"GIF89a", "image/gif"),
    _masked(b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff", b"RIFF\x00\x00\x00\x00WEBPVP",
            "image/webp"),
    _exact(b"\x89PNG\x0d\x0a\x1a\x0a", "image/png"),
    _exact(b"\xff\xd8\xff", "image/jpeg"),
    # audio and video
    _masked(b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff", b"FORM\x00\x00\x00\x00AIFF", "audio/aiff"),
    _masked(b"\xff\xff\xff", b"ID3", "audio/mpeg"),
    _masked(b"\xff\xff\xff\xff\xff", b"OggS\x00", "application/ogg"),
    _masked(b"\xff\xff\xff\xff\xff\xff\xff\xff", b"MThd\x00\x00\x00\x06", "audio/midi"),
    _masked(b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff", b"RIFF\x00\x00\x00\x00AVI ", "video/avi"),
    _masked(b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff", b"RIFF\x00\x00\x00\x00WAVE", "audio/wave"),
    _mp4,
    _exact(b"\x1a\x45\xdf\xa3", "video/webm"),
    # fonts
    _masked(b"\x00" * 34 + b"\xff\xff", b"\x00" * 34 + b"LP", "application/vnd.ms-fontobject"),
    _exact(b"\x00\x01\x00\x00", "font/ttf"),
    _exact(b"OTTO", "font/otf"),
    _exact(b"ttcf", "font/collection"),
    _exact(b"wOFF", "font/woff"),
    _exact(b"wOF2", "font/woff2"),
    # archives
    _exact(b"\x1f\x8b\x08", "application/x-gzip"),
    _exact(b"PK\x03\x04", "application/zip"),
    _exact(b"Rar!\x1a\x07\x00", "application/x-rar-compressed"),
    _exact(b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    _exact(b"\x00\x61\x73\x6d", "application/wasm"),
    _text,  # last
)


def detect_content_type(data: bytes) -> str:
    """The MIME type Go's `http.DetectContentType(data)` returns."""
    data = data[:SNIFF_LEN]
    first_non_ws = 0
    while first_non_ws < len(data) and data[first_non_ws] in _WS:
        first_non_ws += 1
    for match in _SIGNATURES:
        ct = match(data, first_non_ws)
        if ct:
            return ct
    return OCTET_STREAM


def sniff_file(path: Path) -> str:
    """What myshoes' `checkBinary` sees for the file at `path`."""
    with path.open("rb") as f:
        return detect_content_type(f.read(SNIFF_LEN))
