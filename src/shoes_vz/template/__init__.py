"""Golden templates: metadata, the read-only store, and the sim template maker."""

from shoes_vz.template.metadata import TemplateMetadata
from shoes_vz.template.store import Template, TemplateStore, init_sim

__all__ = ["Template", "TemplateMetadata", "TemplateStore", "init_sim"]
