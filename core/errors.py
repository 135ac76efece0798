"""Errors the core raises with messages meant for users."""


class Cancelled(Exception):
    """The job was cancelled; raised between layers or blocks."""


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded: not found, hub unreachable, refused."""
