"""openchat: clean chat data, fine-tune, serve, evaluate and chat with open LLMs."""

__version__ = "0.1.0"
