"""smedit: edit what a language model knows, keep a history, undo any change."""

__version__ = "0.1.0"
