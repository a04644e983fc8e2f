"""evomerge: search for the merge recipe that makes fine-tuned LLMs beat both parents."""

__version__ = "0.1.0"
