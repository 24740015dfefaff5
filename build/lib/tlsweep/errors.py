"""Error types whose message is the one line a user sees at the command line."""


class TlsweepError(Exception):
    """A problem the user can fix; the CLI prints its message alone, without a traceback."""


class ConfigError(TlsweepError, ValueError):
    """A configuration value outside what is allowed; the message quotes both."""


class DataError(TlsweepError):
    """A data set or weights file that is missing, unreadable or corrupt."""


class FetchError(TlsweepError):
    """Something that had to be downloaded could not be; the message says how to pass a local file."""

    def __init__(self, *, what: str, reason: str, remedy: str):
        self.what, self.reason, self.remedy = what, reason, remedy  # remedy: the override that gives a local file
        super().__init__(f"could not download {what} ({reason}); pass a local copy with {remedy}")


class LoggingError(TlsweepError):
    """A run's results could not be written to the tracking store; the run is closed FAILED, with this line."""
