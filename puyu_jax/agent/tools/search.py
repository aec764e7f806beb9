"""Local document search: BM25 (bm25s) over the text files of a folder, passage by passage."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from puyu_jax.agent.tool import Tool

__all__ = ["DocumentSearch", "Passage", "split_passages"]

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".yaml", ".yml", ".csv", ".html", ".tex")


@dataclass(frozen=True)
class Passage:
    source: str  # path relative to the folder
    text: str


def split_passages(text: str, max_words: int = 120) -> list[str]:
    """Blank-line paragraphs, long ones cut into windows of at most `max_words` words."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        for i in range(0, len(words), max_words):
            out.append(" ".join(words[i:i + max_words]))
    return [p for p in out if p]


class DocumentSearch(Tool):
    """BM25 search over a folder's text files (indexed once, at construction).

    Args:
      folder: the documents; files with a suffix in `suffixes` are read recursively.
      max_words: passage length.
      suffixes: which files count as text.
    """

    name = "search"
    description = "Searches the local document collection and returns the most relevant passages with their sources."

    def __init__(self, folder: str | Path, max_words: int = 120, suffixes: tuple[str, ...] = TEXT_SUFFIXES):
        import bm25s

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"search: no folder {str(folder)!r}")
        self.passages: list[Passage] = []
        for f in sorted(self.folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in suffixes:
                text = f.read_text(encoding="utf-8", errors="replace")
                rel = str(f.relative_to(self.folder))
                self.passages += [Passage(rel, p) for p in split_passages(text, max_words)]
        if not self.passages:
            raise ValueError(f"search: no text files ({', '.join(suffixes)}) under {str(folder)!r}")
        self._bm25s = bm25s
        self.index = bm25s.BM25()
        self.index.index(self._tokenize([p.text for p in self.passages]), show_progress=False)

    def _tokenize(self, texts: list[str]):
        return self._bm25s.tokenize(texts, stopwords="en", show_progress=False)

    def search(self, query: str, k: int = 3) -> list[tuple[Passage, float]]:
        """The `k` best passages with their BM25 scores (zero-score passages dropped)."""
        k = max(1, min(k, len(self.passages)))
        docs, scores = self.index.retrieve(self._tokenize([query]), k=k, show_progress=False)
        return [(self.passages[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def run(self, query: Annotated[str, "what to look for"], k: Annotated[int, "how many passages"] = 3) -> str:
        hits = self.search(query, k)
        if not hits:
            return f"no passage matches {query!r}"
        return "\n\n".join(f"[{i + 1}] ({p.source}, score {s:.2f}) {p.text}" for i, (p, s) in enumerate(hits))
