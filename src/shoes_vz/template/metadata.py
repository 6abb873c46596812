"""`TemplateMetadata.json`: what a template is and what it serves (DESIGN §5)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from shoes_vz.core.errors import TemplateError

FILE_NAME = "TemplateMetadata.json"


class TemplateMetadata(BaseModel):
    name: str
    version: str = "1"
    driver: str = Field("vz", description="'vz' for macOS images, 'sim' for simulated guests")
    macos_build: str = ""
    cpu_count: int = 4
    memory_bytes: int = 8 * 1024**3
    disk_bytes: int = 0
    resource_types: list[str] = Field(default_factory=list)
    ssh_user: str = "runner"
    ssh_port: int = 22
    ssh_host_key: str = Field("", description="pinned guest host public key, OpenSSH one-line form; "
                              "'' in a draft: not pinned yet (freeze pins it; the agent refuses an unpinned template)")
    runner_dir: str = Field("", description="guest path of the actions runner; default: the SSH user's home")
    runner_agent_version: str = ""
    digests: dict[str, str] = Field(default_factory=dict, description="relative path → digest "
                                    "('sha256c4m:<hex>', or bare sha256 hex from earlier versions)")
    frozen_at: float | None = Field(None, description="UNIX time of `template freeze`; None in a draft")
    source: str = Field("", description="where it came from: 'tart:/path', 'ipsw:…', 'sim', 'edit:NAME@VERSION'")
    parent_version: str = Field("", description="the version `template edit` started from")

    @classmethod
    def read(cls, directory: Path) -> TemplateMetadata:
        path = directory / FILE_NAME
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise TemplateError(f"{directory} is not a template: {FILE_NAME} is missing") from None
        except ValidationError as e:
            raise TemplateError(f"{path}: invalid metadata: {e}") from None

    @property
    def pinned(self) -> bool:
        """Whether the guest's SSH host key is pinned (runners must never trust an unpinned key)."""
        return bool(self.ssh_host_key.strip())

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of (name, version, sorted digests): the same for every host
        that holds this frozen template, different for any other build of it."""
        import hashlib
        import json

        canonical = json.dumps([self.name, self.version, sorted(self.digests.items())], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
