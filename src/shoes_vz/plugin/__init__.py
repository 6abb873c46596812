"""shoes-vz-plugin: the myshoes (hashicorp go-plugin, gRPC) shoes provider that forwards to the server.

`main` is the console script; `install_plugin` writes the file myshoes' `PLUGIN` points at;
`detect_content_type` is Go's `http.DetectContentType`, which myshoes applies to that file.
"""

from __future__ import annotations

__all__ = ["detect_content_type", "install_plugin"]

from shoes_vz.plugin.install import install_plugin
from shoes_vz.plugin.sniff import detect_content_type
