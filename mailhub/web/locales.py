"""The languages of the built-in form pages: one JSON file per language in static/locales.

Each file holds a "pages" object (these pages' texts) and a "script" object
(the drop-in script's). Adding a language is adding a file; a text missing
from it falls back to English.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT = "en"
_TAG = re.compile(r"^[a-z]{2,3}$")


class Locales:
    """The page texts of every language found in a directory."""

    def __init__(self, directory: Path) -> None:
        self._pages: dict[str, dict[str, str]] = {}
        for path in sorted(directory.glob("*.json")):
            if _TAG.match(path.stem):
                document = json.loads(path.read_text(encoding="utf-8"))
                self._pages[path.stem] = dict(document.get("pages", {}))
        if DEFAULT not in self._pages:
            self._pages[DEFAULT] = {}

    @property
    def languages(self) -> list[str]:
        return sorted(self._pages)

    def choose(self, requested: str | None, accept_language: str | None) -> str:
        """The language to answer in: `requested` (a `lang` field) if known, else Accept-Language's best."""
        for tag in [requested or "", *_preferred(accept_language or "")]:
            primary = tag.strip().lower().split("-")[0]
            if primary in self._pages:
                return primary
        return DEFAULT

    def texts(self, language: str) -> dict[str, str]:
        """Every page text in `language`, English where it has none."""
        return {**self._pages[DEFAULT], **self._pages.get(language, {})}


def _preferred(header: str) -> list[str]:
    """Accept-Language's tags, most wanted first (q=0 left out)."""
    ranked = []
    for position, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        match = re.search(r"q=([0-9.]+)", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                continue
        if tag and quality > 0:
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]
