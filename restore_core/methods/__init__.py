"""Restoration methods behind one interface (see ``base``)."""

from restore_core.methods.base import METHODS, PROVIDERS, Method, get_method, register

__all__ = ["METHODS", "PROVIDERS", "Method", "get_method", "register"]
