"""Russian text normalisation: every output character is in the base config's vocabulary, and
each rewrite is recorded."""

from __future__ import annotations

import pytest
from TTS.tts.utils.text.cleaners import basic_cleaners

from ruslan_glowtts.common.presets import load_preset
from ruslan_glowtts.common.vocabulary import out_of_vocabulary
from ruslan_glowtts.prep.text_normalization import TextOptions, normalize_text
from ruslan_glowtts.training.config import build_config


@pytest.fixture(scope="module")
def vocabulary() -> set[str]:
    config, _ = build_config(preset=load_preset("stable"))
    return set(config.characters.characters) | set(config.characters.punctuations)


@pytest.mark.parametrize(
    "source, expected, change",
    [
        (
            "В 1812 году Наполеон вошёл в Москву.",
            "В тысяча восемьсот двенадцатом году Наполеон вошёл в Москву.",
            "numbers",
        ),
        ("К 1945 году война кончилась.", "К тысяча девятьсот сорок пятому году война кончилась.", "numbers"),
        ("1 января 1812 г.", "первое января тысяча восемьсот двенадцатого года.", "numbers"),
        (
            "Цены выросли на 25% и 3,5 %.",
            "Цены выросли на двадцать пять процентов и три целых пять десятых процента.",
            "numbers",
        ),
        ("Это стоило 21 руб. 2 коп.", "Это стоило двадцать один рубль две копейки.", "numbers"),
        ("Он пришёл 2-го числа", "Он пришёл второго числа", "numbers"),
        ("В 1990-х годах", "В тысяча девятьсот девяностых годах", "numbers"),
        ("Население 10 000 человек", "Население десять тысяч человек", "numbers"),
        ("Много, т. е. очень, и т. д.", "Много, то есть очень, и так далее.", "abbreviations"),
        ("г. Москва, ул. Ленина", "город Москва, улица Ленина", "abbreviations"),
        ('„Здравствуй“, ответила она. "Да"', "«Здравствуй», ответила она. «Да»", "quotes"),
        ("Краткость - сестра таланта", "Краткость — сестра таланта", "dashes"),
        ("1941–1945", "тысяча девятьсот сорок один — тысяча девятьсот сорок пять", "dashes"),
        ("где-то рядом", "где-то рядом", None),
        ("Мор+оз и с+олнце", "Мороз и солнце", "stress_marks"),
        ("Мо\u0301роз", "Мороз", "stress_marks"),
        ("  много   пробелов\u00a0тут\t", "много пробелов тут", "whitespace"),
        ("Он сказал (см. рис. 5)... и ушёл", "Он сказал, смотри рисунок пять… и ушёл", "punctuation"),
        ("№ 5 и 2+2", "номер пять и два плюс два", "symbols"),
        ("Зима!.. Крестьянин, торжествуя", "Зима!.. Крестьянин, торжествуя", None),
    ],
)
def test_normalisation_rewrites_and_records(source, expected, change, vocabulary):
    result = normalize_text(source)
    assert result.text == expected
    if change is None:
        assert result.changes == ()
    else:
        assert change in result.changes
    assert not out_of_vocabulary(result.text, vocabulary, basic_cleaners)


def test_stress_marks_can_be_kept_and_accents_become_plus():
    keep = TextOptions(stress="keep")
    assert normalize_text("Мор+оз и с+олнце", keep).text == "Мор+оз и с+олнце"
    assert normalize_text("Мо\u0301роз", keep).text == "М+ороз"  # accent after the vowel -> '+' before it
    assert normalize_text("2+2 мор+оз", keep).text == "два плюс два мор+оз"


def test_yo_policy():
    assert normalize_text("Всё ещё", TextOptions(yo="e")).text == "Все еще"
    assert normalize_text("Всё ещё").text == "Всё ещё"


def test_what_cannot_be_normalised_is_reported_not_altered(vocabulary):
    for source, missing, kept in [
        ("Hello, мир!", ["e", "h", "l", "o"], "hello"),
        ("В XIX в.", ["i", "x"], "xix"),
        ("цена 5$", ["$"], "$"),
    ]:
        result = normalize_text(source)
        assert out_of_vocabulary(result.text, vocabulary, basic_cleaners) == missing
        assert kept in result.text.lower(), (source, result.text)  # this source's own untranslatable part


def test_options_are_validated():
    with pytest.raises(ValueError):
        TextOptions(stress="maybe")
    with pytest.raises(ValueError):
        TextOptions(yo="ё")
