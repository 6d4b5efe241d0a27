"""Exceptions. Every error a user can cause is an LmzipError: the CLI prints one line, exits 1."""


class LmzipError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class FormatError(LmzipError):
    """A file is not a valid lmzip file (bad magic, truncated, corrupt, over a limit)."""


class VersionError(FormatError):
    """A file uses a format or numerics version this build does not support."""


class ChecksumError(FormatError):
    """Decoded or stored data does not match its checksum."""


class ModelMismatchError(LmzipError):
    """A compressed file was made with another model than the one given."""


class TokenizerError(LmzipError):
    """A tokenizer cannot be used losslessly (e.g. it has no byte fallback)."""
