"""Inputs with the content type Go's http.DetectContentType gives them (cases from Go's sniff_test.go
plus the plugin files that matter to myshoes). Shared by the Python test and the Go cross-check."""

from __future__ import annotations

CASES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "text/plain; charset=utf-8"),
    ("binary", b"\x01\x02\x03", "application/octet-stream"),
    ("html1", b"<HtMl><bOdY>blah blah blah</body></html>", "text/html; charset=utf-8"),
    ("html2", b"<HTML></HTML>", "text/html; charset=utf-8"),
    ("html3", b"   <!DOCTYPE HTML>...", "text/html; charset=utf-8"),
    ("html4", b"\r\n<html>...", "text/html; charset=utf-8"),
    ("text", "This is not HTML. It has ☃ though.".encode(), "text/plain; charset=utf-8"),
    ("xml", b"\n<?xml!", "text/xml; charset=utf-8"),
    ("icon", b"\x00\x00\x01\x00", "image/x-icon"),
    ("gif", b"GIF87a", "image/gif"),
    ("png", b"\x89PNG\x0d\x0a\x1a\x0a", "image/png"),
    ("jpeg", b"\xff\xd8\xff", "image/jpeg"),
    ("mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom<\x06t\xbfmdat", "video/mp4"),
    ("pdf", b"%PDF-1.4", "application/pdf"),
    ("gzip", b"\x1f\x8b\x08\x00", "application/x-gzip"),
    ("zip", b"PK\x03\x04\x14\x00", "application/zip"),
    ("wasm", b"\x00asm\x01\x00\x00\x00", "application/wasm"),
    ("utf16le-bom", b"\xff\xfe\x00\x00", "text/plain; charset=utf-16le"),
    ("bare-python-script", b"#!/usr/bin/env python3\nimport sys\nprint(sys.argv)\n", "text/plain; charset=utf-8"),
    ("shell-script", b"#!/bin/sh\nexec python3 -m shoes_vz.plugin.main \"$@\"\n", "text/plain; charset=utf-8"),
    ("elf", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8, "application/octet-stream"),
    ("control-byte-late", b"#!/bin/sh\n" + b"a" * 400 + b"\x01", "application/octet-stream"),
    ("control-byte-after-512", b"#!/bin/sh\n" + b"a" * 600 + b"\x01", "text/plain; charset=utf-8"),
]
