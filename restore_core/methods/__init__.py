"""Restoration methods behind one interface (see ``base``).

Method modules (``adir``, ``shred``, ``diip``, ``indi``, ``pinv``) register themselves when
imported; ``get_method(name)`` imports the right one lazily via ``PROVIDERS`` (the one list
of method names, also ``METHOD_NAMES``), so importing this package stays cheap and a
missing module fails only when its method is used.
"""

from restore_core.methods.base import (
    INFO_KEYS,
    METHOD_NAMES,
    METHODS,
    PROVIDERS,
    Method,
    available_methods,
    base_info,
    get_method,
    register,
    require_linear_operator,
)

__all__ = [
    "INFO_KEYS",
    "METHODS",
    "METHOD_NAMES",
    "PROVIDERS",
    "Method",
    "available_methods",
    "base_info",
    "get_method",
    "register",
    "require_linear_operator",
]
