# Written with AI assistance; review before relying on it.
"""Cerebro: a Cog endpoint that serves Phi-3.5-vision-instruct natively on current transformers."""

__version__ = "0.1.0"
