"""Restoration methods behind one interface (see ``base``).

Method modules (``adir``; ``shred``, ``diip``, ``indi`` by their owners) register
themselves when imported; ``get_method(name)`` imports the right one lazily via
``PROVIDERS``, so importing this package stays cheap and a missing module fails only
when its method is used.
"""

from restore_core.methods.base import (INFO_KEYS, METHODS, PROVIDERS, Method, available_methods, base_info,
                                       get_method, register, require_linear_operator)

__all__ = ["INFO_KEYS", "METHODS", "PROVIDERS", "Method", "available_methods", "base_info", "get_method",
           "register", "require_linear_operator"]
