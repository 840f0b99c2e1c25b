"""The comparison key of a text: what two texts share when they are the same text written differently.

Case, punctuation, symbols, whitespace and URLs are ignored, so "A pretentious mess." and "a pretentious mess",
or one tweet with two different shortened links, get one key. Splitting groups texts by this key (near-duplicates
never cross splits) and the transfer set drops extra text whose key belongs to a labelled or held-out text.
"""

from __future__ import annotations

import re
import unicodedata

URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def comparison_key(text: str) -> str:
    """Case-folded text without URLs, punctuation, symbols, control characters or repeated whitespace."""
    without_urls = URL.sub(" ", text)
    kept = "".join(" " if unicodedata.category(char)[0] in "PSZC" else char for char in without_urls.casefold())
    return " ".join(kept.split())
