"""The SDK's version, sent in the User-Agent of every request."""

__version__ = "0.1.0"
USER_AGENT = f"labs-analytics-python/{__version__}"
