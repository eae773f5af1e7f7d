"""Processor for pruning-aware LLaVA-NeXT: stock LLaVA-NeXT processing, plus the token -> pixel geometry."""

from transformers import LlavaNextProcessor


class LlavaNextCodebookProcessor(LlavaNextProcessor):
    """Stock `LlavaNextProcessor` (same inputs, same placeholders)."""


__all__ = ["LlavaNextCodebookProcessor"]
