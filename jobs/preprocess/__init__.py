"""The dataset preprocessor: a corpus in, a GPT-NeoX indexed dataset out (`python -m jobs.preprocess`)."""

from jobs.preprocess.pipeline import Stats, preprocess

__all__ = ["Stats", "preprocess"]
