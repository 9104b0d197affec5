"""Error classes raised to users of ann2snn."""

from __future__ import annotations


class ConversionError(ValueError):
    """A model cannot be converted; the message names every offending node and the fix."""


class DataNotFoundError(FileNotFoundError):
    """A dataset could not be found; the message says where we looked and how to get it."""


class SNNFileError(ValueError):
    """A saved SNN file is damaged; the message names the damaged part."""


class UntrustedFileError(ValueError):
    """A file can only be read by running code from it, and it was not marked as trusted."""
