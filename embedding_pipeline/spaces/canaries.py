"""Canary texts: embedded at registration, re-embedded by the validator.

A model swapped behind an unchanged name and dimension (Honcho's documented footgun) moves
these vectors; the same model reproduces them to within float noise. English and Polish,
written for this project; never logged.
"""

CANARY_TEXTS: tuple[str, ...] = (
    "The invoice was paid twice, so we refunded the second charge on Monday.",
    "Restart the ingestion worker after rotating the database password.",
    "A cup of strong black tea with lemon helps me think in the morning.",
    "The river flooded the lower fields after three days of heavy rain.",
    "Faktura została opłacona dwa razy, więc zwróciliśmy drugą płatność w poniedziałek.",
    "Zrestartuj proces importu po zmianie hasła do bazy danych.",
    "Żółta łódź dryfowała powoli wzdłuż brzegu jeziora o zachodzie słońca.",
    "Lekarz zalecił odpoczynek, dużo wody i spacer codziennie rano.",
)

# Same model, same weights: cosine of a re-embedding to the stored canary stays above this.
CANARY_MIN_COSINE = 0.999
