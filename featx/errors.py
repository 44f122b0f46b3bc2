"""Exceptions featx raises for problems a user can fix; the CLI prints them as one line."""


class FeatxError(Exception):
    """Base class: the message alone tells the user what went wrong and what to do."""


class UnknownBackboneError(FeatxError, KeyError):
    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class WeightsUnavailableError(FeatxError, FileNotFoundError):
    pass


class DataError(FeatxError, ValueError):
    """The image folder is not laid out the way featx needs."""


class CacheError(FeatxError, ValueError):
    """A feature cache is missing, unreadable, or made for another configuration."""


class BundleError(FeatxError, ValueError):
    """A model bundle is missing, unreadable, or does not fit the data it is used with."""


class ConfigError(FeatxError, ValueError):
    """An option has a value featx cannot use."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its type and the first line of its message (torch's
    and h5py's run to many lines)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__
