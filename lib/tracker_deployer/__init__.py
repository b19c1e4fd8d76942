"""Deploy Torrust Tracker stacks over SSH, with scheduled, verified backups."""

__version__ = "0.1.0"
