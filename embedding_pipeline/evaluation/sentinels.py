"""Sentinel texts for the smoke test: synthetic, written for this project, English and Polish.

They carry no private data, yet the smoke output still never includes them (only their count
and languages): the output format must stay safe when someone swaps in texts of their own.
They differ from the canary texts, so a smoke run never touches the canaries' role.
"""

from __future__ import annotations

SENTINELS: tuple[tuple[str, str], ...] = (
    ("en", "The lighthouse keeper logged three passing ships before the storm arrived."),
    ("en", "Please move the quarterly planning meeting from Tuesday to Thursday afternoon."),
    ("en", "Sourdough bread needs a long, cool rise to develop its sour flavour."),
    ("pl", "Latarnik zapisał w dzienniku trzy statki, zanim nadciągnęła burza."),
    ("pl", "Proszę przenieść kwartalne spotkanie planistyczne z wtorku na czwartek po południu."),
    ("pl", "Chleb na zakwasie potrzebuje długiego, chłodnego wyrastania, żeby nabrać smaku."),
)


def sentinel_texts() -> list[str]:
    return [text for _, text in SENTINELS]


def sentinel_languages() -> list[str]:
    return sorted({lang for lang, _ in SENTINELS})
