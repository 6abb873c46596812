"""Golden templates: metadata, the store, drafts, import from tart, freeze, verify, edit, sim templates."""

from shoes_vz.template.draft import Draft, new_draft
from shoes_vz.template.edit import edit
from shoes_vz.template.freeze import freeze, live_users
from shoes_vz.template.metadata import TemplateMetadata
from shoes_vz.template.sim import init_sim
from shoes_vz.template.store import Template, TemplateStore
from shoes_vz.template.tart import import_tart
from shoes_vz.template.usable import UsableTemplates
from shoes_vz.template.verify import DigestCache, Verification, verify
from shoes_vz.vm.digest import file_digest

__all__ = [
    "DigestCache", "Draft", "Template", "TemplateMetadata", "TemplateStore", "UsableTemplates", "Verification",
    "edit", "file_digest", "freeze", "import_tart", "init_sim", "live_users", "new_draft", "verify",
]
