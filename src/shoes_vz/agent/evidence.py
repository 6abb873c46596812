"""`Evidence`: what a failed runner leaves for the operator after its bundle is gone.

    <state_dir>/evidence/<runner-id>/
        vm.log                 the VM process's log (the driver's output, its last words)
        RuntimeMetadata.json   the bundle's runtime metadata as it was at teardown
        runner.json            the agent's record of the runner (phase, error, timings, template, …)

The log is linked (or copied) the moment the runner fails, so the error message that names it never
names a file that is gone; teardown adds the rest. Retention: at most `keep` runners, none older
than `max_age` seconds (the oldest go first); pruned whenever one is added. Every runner's evidence
is kept, not only failed ones', when the agent is told so (`shoes-vz up --keep`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from shoes_vz.vm.bundle import Bundle, write_json_atomic

log = logging.getLogger(__name__)
LOG = "vm.log"
RECORD = "runner.json"


class Evidence:
    def __init__(self, root: Path, *, keep: int, max_age: float) -> None:
        self.root = root
        self.keep = keep
        self.max_age = max_age

    def log_of(self, runner_id: str) -> Path:
        return self.root / runner_id / LOG

    def take_log(self, bundle: Bundle) -> Path | None:
        """The VM log, kept now (a hard link, so lines the VM process still writes land in it too);
        None when nothing is kept (`keep` is 0, or there is no log)."""
        if self.keep <= 0 or not bundle.log_file.exists():
            return None
        target = self.log_of(bundle.runner_id)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            try:
                os.link(bundle.log_file, target)
            except OSError:  # another volume (EXDEV) or no hard links: a copy, refreshed at teardown
                shutil.copyfile(bundle.log_file, target)
        except OSError as e:
            log.warning("cannot keep %s in %s: %s", bundle.log_file, target.parent, e)
            return None
        return target

    def keep_runner(self, bundle: Bundle, record: dict[str, Any]) -> Path | None:
        """Keep the bundle's log and metadata and the agent's record (blocking); then prune."""
        if self.keep <= 0:
            return None
        target = self.root / bundle.runner_id
        try:
            target.mkdir(parents=True, exist_ok=True)
            log_copy = target / LOG
            if bundle.log_file.exists() and not _same_file(bundle.log_file, log_copy):
                shutil.copyfile(bundle.log_file, log_copy)
            if bundle.runtime_metadata.exists():
                shutil.copyfile(bundle.runtime_metadata, target / bundle.runtime_metadata.name)
            write_json_atomic(target / RECORD, {**record, "kept_at": time.time()})
        except OSError as e:
            log.warning("cannot keep the evidence of runner %s in %s: %s", bundle.runner_id, target, e)
            return None
        self.prune()
        return target

    def prune(self, now: float | None = None) -> list[Path]:
        """Remove evidence beyond `keep` runners or older than `max_age` (blocking)."""
        now = time.time() if now is None else now
        if not self.root.is_dir():
            return []
        entries = sorted((p for p in self.root.iterdir() if p.is_dir()), key=_mtime, reverse=True)
        doomed = [p for i, p in enumerate(entries) if i >= self.keep or now - _mtime(p) > self.max_age]
        for p in doomed:
            shutil.rmtree(p, ignore_errors=True)
        return doomed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


__all__ = ["Evidence"]
