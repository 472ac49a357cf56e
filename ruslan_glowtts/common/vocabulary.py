"""Which characters of a text the model's vocabulary lacks, as Coqui's tokenizer will see the text.

Coqui's tokenizer cleans a text (config.text_cleaner, with the dataset's language) and then drops
every character outside its vocabulary with one warning. prepare excludes such lines, training
refuses to start on them and synthesis warns: all three ask this module, so a line prepare keeps
is a line training accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ruslan_glowtts.common.errors import UserError


@dataclass(frozen=True)
class Vocabulary:
    characters: frozenset[str]
    cleaner: Callable[..., str] | None = None  # a Coqui cleaner: cleaner(text, lang=...)
    language: str | None = None  # the dataset's language, passed to the cleaner

    @classmethod
    def from_config(cls, config: Any) -> Vocabulary:
        """The vocabulary and cleaner of Coqui's tokenizer for this config (what training uses)."""
        from TTS.tts.utils.text import cleaners
        from TTS.tts.utils.text.tokenizer import TTSTokenizer

        if config.text_cleaner and not callable(getattr(cleaners, config.text_cleaner, None)):
            raise UserError(f"text_cleaner '{config.text_cleaner}' is not one of Coqui's cleaners")
        tokenizer, _ = TTSTokenizer.init_from_config(config)
        language = config.datasets[0].language if config.datasets else None
        return cls(frozenset(tokenizer.characters.vocab), tokenizer.text_cleaner, language or None)

    def clean(self, text: str, language: str | None = None) -> str:
        """The text as the tokenizer sees it (Coqui strips a language's region code: ru-RU -> ru)."""
        if self.cleaner is None:
            return text
        language = language or self.language
        return self.cleaner(text, lang=None if language is None else language.split("-")[0])

    def unknown(self, text: str, language: str | None = None) -> list[str]:
        """Every character of the cleaned text that the vocabulary lacks, in order, repeats kept."""
        return [char for char in self.clean(text, language) if char not in self.characters]


def out_of_vocabulary(text: str, vocabulary: Iterable[str], cleaner: Callable[..., str] | None = None) -> list[str]:
    """The distinct characters of the cleaned text that `vocabulary` lacks, sorted."""
    return sorted(set(Vocabulary(frozenset(vocabulary), cleaner).unknown(text)))
