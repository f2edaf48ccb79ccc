"""Node classes of the pack, gathered for registration."""
from . import guidance, heads, relative, report, self_guidance

_MODULES = (heads, guidance, relative, self_guidance, report)
NODE_CLASS_MAPPINGS: dict[str, type] = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
