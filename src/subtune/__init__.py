"""subtune: selective and parameter-efficient fine-tuning of pretrained vision models."""

__version__ = "0.1.0"


class SubtuneError(Exception):
    """An error caused by bad input (a config key, a file, a URL, a checksum).

    The CLI prints it as one line naming the culprit and exits with status 2,
    before any expensive work starts.
    """
