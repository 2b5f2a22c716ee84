"""Model adapters; importing this module registers every family.

Each adapter imports its heavy dependency lazily, so the registry lists a
family even when that dependency is missing (and says what to install).
"""

from pyvlmx.models.adapters import open_clip  # noqa: F401
from pyvlmx.models.adapters import conse  # noqa: F401
from pyvlmx.models.adapters import hf  # noqa: F401
from pyvlmx.models.adapters import imagebind  # noqa: F401
