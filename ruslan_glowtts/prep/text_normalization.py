"""Russian text normalisation for the training text.

RUSLAN's transcripts contain digits, abbreviations, several kinds of quotes and dashes and, in
some redistributions, `+` stress marks. Coqui's tokenizer drops every character outside the
vocabulary with one warning, so the model would silently learn that "1812" is silence. Each step
below rewrites one kind of thing and records a change code, so the report can say what was done
to which line. Characters that no step can handle (Latin letters, rare symbols) are left alone
and reported by ruslan_glowtts/common/vocabulary.py; lines with them are excluded, not guessed at.

Limits: numbers get the case only where the next word or a suffix tells it ("в 1812 году",
"5-го", "25%"); otherwise the nominative cardinal is used. Roman numerals are not expanded.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from num2words import num2words
from num2words.lang_RU import Num2Word_RU

from ruslan_glowtts.prep.problems import Legend

logger = logging.getLogger(__name__)

STRESS_MARK = "+"
VOWELS = "аеёиоуыэюяАЕЁИОУЫЭЮЯ"
COMBINING_ACUTE = "\u0301"  # the other common way to mark stress
COMBINING_GRAVE = "\u0300"

# code -> what the step does; the report's legend for text changes.
TEXT_CHANGES: dict[str, str] = {
    "unicode": "Unicode normalised to NFC (composed letters)",
    "stress_marks": "stress marks stripped (--stress strip), or combining accents turned into '+' (--stress keep)",
    "yo": "ё replaced by е (--yo e)",
    "whitespace": "whitespace unified and collapsed",
    "quotes": "quotes unified to «»; apostrophes inside words removed",
    "dashes": "dashes unified: '—' between words, '-' inside words",
    "abbreviations": "common abbreviations expanded (т. е., и т. д., руб., г. ...)",
    "numbers": "numbers written as Russian words (num2words)",
    "symbols": "symbols spelled out (%, №, §, &, +)",
    "punctuation": "brackets and slashes turned into commas, '...' into '…', '*' removed",
}

# code -> (action, what it means): what is still wrong after normalisation.
TEXT_PROBLEMS: Legend = {
    "latin_letters": (
        "excluded",
        (
            "Latin letters remain (names, Roman numerals): not in the Russian vocabulary; "
            "transliterate the line in the source metadata to keep it"
        ),
    ),
    "out_of_vocabulary": (
        "excluded",
        ("characters outside the config's characters/punctuations remain after normalisation"),
    ),
    "no_letters": ("excluded", "the normalised text has no letters to speak"),
}


@dataclass(frozen=True)
class TextOptions:
    stress: str = "strip"  # strip | keep: what to do with `+` stress marks
    yo: str = "keep"  # keep | e: keep ё, or write е (when the corpus marks ё inconsistently)

    def __post_init__(self) -> None:
        if self.stress not in ("strip", "keep"):
            raise ValueError(f"stress must be 'strip' or 'keep', got {self.stress!r}")
        if self.yo not in ("keep", "e"):
            raise ValueError(f"yo must be 'keep' or 'e', got {self.yo!r}")


@dataclass(frozen=True)
class NormalizedText:
    text: str
    changes: tuple[str, ...]


_RU = Num2Word_RU()

# ----------------------------------------------------------------------------------------------
# Numbers


def _cardinal(number: float, gender: str = "m") -> str:
    words = num2words(number, lang="ru", gender=gender)
    # num2words says "одна тысяча восемьсот двенадцать"; speakers say "тысяча восемьсот двенадцать".
    return words.removeprefix("одна ") if words.startswith("одна тысяча") else words


# Suffix of an ordinal ("5-го") -> (case, gender, plural) for num2words.
ORDINAL_SUFFIXES: dict[str, tuple[str, str, bool]] = {
    "й": ("n", "m", False),
    "ый": ("n", "m", False),
    "ий": ("n", "m", False),
    "я": ("n", "f", False),
    "ая": ("n", "f", False),
    "е": ("n", "n", False),
    "ое": ("n", "n", False),
    "ее": ("n", "n", False),
    "го": ("g", "m", False),
    "ого": ("g", "m", False),
    "му": ("d", "m", False),
    "ому": ("d", "m", False),
    "м": ("p", "m", False),
    "ом": ("p", "m", False),
    "ю": ("a", "f", False),
    "ую": ("a", "f", False),
    "ой": ("g", "f", False),
    "ым": ("i", "m", False),
    "х": ("p", "m", True),
    "ых": ("p", "m", True),
    "ми": ("i", "m", True),
    "ыми": ("i", "m", True),
    "ые": ("n", "m", True),
}
# Forms of "год" after a year -> the case of the ordinal ("в 1812 году" = в тысяча восемьсот двенадцатом году).
YEAR_WORDS = {"год": "n", "года": "g", "году": "p", "годом": "i", "годе": "p", "годы": "n", "годах": "p"}

MONTHS = (
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
)
# A preposition before a date -> the ordinal's case ("до 5 мая" = до пятого мая); otherwise "пятое мая".
DATE_PREPOSITIONS = {"до": "g", "с": "g", "со": "g", "после": "g", "от": "g", "около": "g", "к": "d"}

# Unit abbreviations after a number: forms for 1, 2-4 and 5+ ("1 рубль, 2 рубля, 5 рублей").
UNITS: dict[str, tuple[str, str, str]] = {
    "%": ("процент", "процента", "процентов"),
    "руб.": ("рубль", "рубля", "рублей"),
    "руб": ("рубль", "рубля", "рублей"),
    "р.": ("рубль", "рубля", "рублей"),
    "коп.": ("копейка", "копейки", "копеек"),
    "коп": ("копейка", "копейки", "копеек"),
    "тыс.": ("тысяча", "тысячи", "тысяч"),
    "млн": ("миллион", "миллиона", "миллионов"),
    "млн.": ("миллион", "миллиона", "миллионов"),
    "млрд": ("миллиард", "миллиарда", "миллиардов"),
    "млрд.": ("миллиард", "миллиарда", "миллиардов"),
    "км/ч": ("километр в час", "километра в час", "километров в час"),
    "км": ("километр", "километра", "километров"),
    "кг": ("килограмм", "килограмма", "килограммов"),
    "см": ("сантиметр", "сантиметра", "сантиметров"),
    "мм": ("миллиметр", "миллиметра", "миллиметров"),
    "ч.": ("час", "часа", "часов"),
    "мин.": ("минута", "минуты", "минут"),
    "сек.": ("секунда", "секунды", "секунд"),
}
FEMININE_UNITS = {"копейка", "минута", "секунда", "тысяча"}  # одна копейка, две минуты
_UNIT_PATTERN = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))

_NUMBER = r"\d+(?:,\d+)?"
_GROUPED = re.compile(r"(?<![\d,])\d{1,3}(?:[ \u00a0\u202f\u2009]\d{3})+(?![\d,])")
_ORDINAL = re.compile(r"(\d+)-(" + "|".join(sorted(ORDINAL_SUFFIXES, key=len, reverse=True)) + r")(?![а-яё])")
_YEAR = re.compile(r"(?:(?<![а-яёА-ЯЁ])([вВкК])\s+)?(\d{1,4})\s*(" + "|".join(YEAR_WORDS) + r"|гг\.|г\.)(?![а-яё])")
_DATE = re.compile(
    r"(?:(?<![а-яёА-ЯЁ])(" + "|".join(DATE_PREPOSITIONS) + r")\s+)?(\d{1,2})\s+(" + "|".join(MONTHS) + r")(?![а-яё])",
    re.IGNORECASE,
)
_WITH_UNIT = re.compile(rf"({_NUMBER})\s*({_UNIT_PATTERN})(?![а-яёА-ЯЁ])")
_DECIMAL = re.compile(r"(\d+),(\d+)")
_INTEGER = re.compile(r"\d+")


def _to_number(text: str) -> int | float:
    return float(text.replace(",", ".")) if "," in text else int(text)


def _spell_ordinal(match: re.Match) -> str:
    case, gender, plural = ORDINAL_SUFFIXES[match.group(2)]
    return _RU.to_ordinal(int(match.group(1)), case=case, gender=gender, plural=plural)


def _spell_year(match: re.Match) -> str:
    preposition, year, word = match.group(1), match.group(2), match.group(3)
    at_end = not match.string[match.end() :].strip(" »")
    if word == "г.":  # "в 1812 г." = в ... году; "1 января 1812 г." = ... года
        word = "году" if preposition else "года"
    elif word == "гг.":
        word = "годах" if preposition in ("в", "В") else "годы"
    case = "d" if preposition in ("к", "К") and word == "году" else YEAR_WORDS[word]
    plural = word in ("годы", "годах")
    ordinal = _RU.to_ordinal(int(year), case=case, gender="m", plural=plural)
    end = "." if at_end and match.group(3).endswith(".") else ""  # the abbreviation's dot ended the sentence
    return " ".join(part for part in (preposition, ordinal, word) if part) + end


def _spell_date(match: re.Match) -> str:
    preposition, day, month = match.group(1), int(match.group(2)), match.group(3)
    if not 1 <= day <= 31:
        return match.group(0)
    case = DATE_PREPOSITIONS.get(preposition.lower(), "n") if preposition else "n"
    ordinal = _RU.to_ordinal(day, case=case, gender="n")
    return " ".join(part for part in (preposition, ordinal, month) if part)


def _spell_with_unit(match: re.Match) -> str:
    number = _to_number(match.group(1))
    one, few, many = UNITS[match.group(2)]
    if isinstance(number, float):
        form = few  # "3,5 процента": a fraction takes the genitive singular
    else:
        form = _RU.pluralize(number, (one, few, many))
    words = _cardinal(number, gender="f" if one in FEMININE_UNITS and isinstance(number, int) else "m")
    at_end = not match.string[match.end() :].strip(" »")
    end = "." if at_end and match.group(2).endswith(".") else ""
    return f"{words} {form}{end}"


def _spell_numbers(text: str) -> str:
    text = _GROUPED.sub(lambda m: re.sub(r"\D", "", m.group(0)), text)
    text = _ORDINAL.sub(_spell_ordinal, text)
    text = _YEAR.sub(_spell_year, text)
    text = _DATE.sub(_spell_date, text)
    text = _WITH_UNIT.sub(_spell_with_unit, text)
    text = _DECIMAL.sub(lambda m: _cardinal(_to_number(m.group(0))), text)
    return _INTEGER.sub(lambda m: _cardinal(int(m.group(0))), text)


# ----------------------------------------------------------------------------------------------
# Abbreviations (after the unit rules, which handle the ones that follow a number)

# (pattern, expansion); patterns match the lowercase spelling with optional spaces after dots.
ABBREVIATIONS: list[tuple[str, str]] = [
    (r"т\.\s*е\.", "то есть"),
    (r"т\.\s*д\.", "так далее"),
    (r"т\.\s*п\.", "тому подобное"),
    (r"т\.\s*к\.", "так как"),
    (r"т\.\s*н\.", "так называемый"),
    (r"до\s+н\.\s*э\.", "до нашей эры"),
    (r"н\.\s*э\.", "нашей эры"),
    (r"и\s+др\.", "и другие"),
    (r"и\s+пр\.", "и прочее"),
    (r"напр\.", "например"),
    (r"см\.", "смотри"),
    (r"ср\.", "сравни"),
    (r"стр\.", "страница"),
    (r"рис\.", "рисунок"),
    (r"табл\.", "таблица"),
    (r"гл\.", "глава"),
    (r"ул\.", "улица"),
    (r"им\.", "имени"),
    (r"проф\.", "профессор"),
    (r"акад\.", "академик"),
    (r"тов\.", "товарищ"),
    (r"св\.", "святой"),
    (r"г\.(?=\s*(?-i:[А-ЯЁ]))", "город"),  # "г. Москва"; "1812 г." is handled with the number
    (r"гг\.", "годы"),
    (r"руб\.", "рублей"),
    (r"коп\.", "копеек"),
    (r"тыс\.", "тысяч"),
    (r"млн\.?(?![а-яё])", "миллионов"),
    (r"млрд\.?(?![а-яё])", "миллиардов"),
]
_ABBREVIATIONS = [
    (re.compile(r"(?<![а-яёА-ЯЁ])" + pattern, re.IGNORECASE), expansion) for pattern, expansion in ABBREVIATIONS
]


def _expand_abbreviations(text: str) -> str:
    for pattern, expansion in _ABBREVIATIONS:

        def replace(match: re.Match, expansion: str = expansion) -> str:
            words = expansion.capitalize() if match.group(0)[0].isupper() else expansion
            # The abbreviation's dot also ended the sentence ("... и т. д."): keep one.
            at_end = not match.string[match.end() :].strip(" »")
            return words + ("." if at_end and match.group(0).endswith(".") else "")

        text = pattern.sub(replace, text)
    return text


# ----------------------------------------------------------------------------------------------
# Stress marks, quotes, dashes, symbols, whitespace


def _arithmetic_plus(text: str) -> str:
    return re.sub(r"(\d)\s*\+\s*(?=\d)", r"\1 плюс ", text)  # "2+2" is arithmetic, not a stress mark


def _stress(text: str, keep: bool) -> str:
    text = text.replace(COMBINING_GRAVE, "")
    if keep:
        # "мо́роз" (accent after the vowel) -> "м+ороз" (the `+`-before-the-vowel convention)
        text = re.sub(f"([{VOWELS}]){COMBINING_ACUTE}", rf"{STRESS_MARK}\1", text)
        text = text.replace(COMBINING_ACUTE, "")
        return re.sub(rf"\{STRESS_MARK}+(?![{VOWELS}])", "", text)  # a `+` that stresses nothing
    return text.replace(COMBINING_ACUTE, "").replace(STRESS_MARK, "")


_SPACES = re.compile(r"[\s\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_INVISIBLE = re.compile(r"[\u00ad\u200b\u200c\u200d\u2060\ufeff]")  # soft hyphen, zero-width marks


def _whitespace(text: str) -> str:
    text = _INVISIBLE.sub("", text)
    text = _SPACES.sub(" ", text)
    text = re.sub(r" +([,.!?:;…»])", r"\1", text)
    text = re.sub(r"« +", "«", text)
    return text.strip()


_QUOTES = "\"„“”‟‹›‚‘’'`´"


def _quotes(text: str) -> str:
    text = re.sub(r"(?<=[^\W\d_])['’ʼ`´](?=[^\W\d_])", "", text)  # д’Артаньян -> дАртаньян (an apostrophe, not a quote)
    out = []
    for i, char in enumerate(text):
        if char in _QUOTES:
            before = text[i - 1] if i else " "
            opening = before.isspace() or before in "([{«—-"
            out.append("«" if opening else "»")
        else:
            out.append(char)
    return "".join(out)


def _dashes(text: str) -> str:
    text = re.sub("[\u2010\u2011]", "-", text)  # typographic hyphens
    text = re.sub(r"\u2212\s*(?=\d)", "минус ", text)
    text = re.sub("[\u2012\u2013\u2014\u2015\u2212]", "—", text)
    text = re.sub(r"(\d)\s*[-—]\s*(\d)", r"\1 — \2", text)  # ranges: 1941–1945
    text = re.sub(r"(^|\s)-+(\s|$)", r"\1—\2", text)  # a spaced hyphen is a dash
    text = re.sub(r"—(?=[^\s,.!?:;…»])", "— ", text)
    return re.sub(r"(?<=[^\s«(—])—", " —", text)


def _symbols(text: str) -> str:
    text = re.sub(r"№\s*", "номер ", text)
    text = re.sub(r"§\s*", "параграф ", text)
    text = re.sub(r"\s*&\s*", " и ", text)
    return re.sub(r"(?<=\s)%|^%", "процентов", text)


def _punctuation(text: str) -> str:
    text = re.sub(r"\.{3,}", "…", text)
    text = text.replace("*", "")
    text = re.sub(r"\s*[()\[\]{}/]\s*", ", ", text)
    text = re.sub(r",(\s*,)+", ",", text)
    text = re.sub(r",\s*(?=[.!?…;:,]|$)", "", text)
    return re.sub(r"^[\s,]+", "", text)


def _yo(text: str) -> str:
    return text.replace("ё", "е").replace("Ё", "Е")


# ----------------------------------------------------------------------------------------------


def normalize_text(text: str, options: TextOptions = TextOptions()) -> NormalizedText:
    """The training text for one transcript, and the codes of what was changed."""
    steps: list[tuple[str, Callable[[str], str]]] = [
        ("unicode", lambda t: unicodedata.normalize("NFC", t)),
        ("symbols", _arithmetic_plus),
        ("stress_marks", lambda t: _stress(t, options.stress == "keep")),
        ("yo", _yo if options.yo == "e" else (lambda t: t)),
        ("whitespace", _whitespace),
        ("quotes", _quotes),
        ("dashes", _dashes),
        ("numbers", _spell_numbers),
        ("symbols", _symbols),
        ("abbreviations", _expand_abbreviations),
        ("punctuation", _punctuation),
        ("whitespace", _whitespace),
    ]
    changes: list[str] = []
    for code, step in steps:
        new = step(text)
        if new != text and code not in changes:
            changes.append(code)
        text = new
    return NormalizedText(text, tuple(changes))
