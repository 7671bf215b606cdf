"""Exception types whose messages are shown to users as one-line errors."""


class SerprepError(Exception):
    """Base class: the CLI prints ``str(exc)`` on one line and exits non-zero."""


class CorpusLayoutError(SerprepError):
    """The corpus root does not look like the layout the reader expects."""


class AudioError(SerprepError):
    """An audio file is unreadable, empty or corrupt."""


class StoreError(SerprepError):
    """A feature store is missing, damaged, or incompatible with the caller."""
