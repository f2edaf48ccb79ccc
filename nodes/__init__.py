"""Node classes of the pack, gathered for registration."""
from . import guidance, heads

NODE_CLASS_MAPPINGS: dict[str, type] = {**heads.NODE_CLASS_MAPPINGS, **guidance.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {**heads.NODE_DISPLAY_NAME_MAPPINGS, **guidance.NODE_DISPLAY_NAME_MAPPINGS}
