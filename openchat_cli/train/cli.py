"""`openchat train` (not built yet)."""

from openchat_cli.stub import not_implemented


def train_command() -> None:
    """Fine-tune a model on a tokenized dataset."""
    not_implemented("train")
