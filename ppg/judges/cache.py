"""The verdict cache: a judge's answers keyed by what produced them (the judge's model, its
answer budget and the exact prompt, which holds the template, the persona, the history shown and
the line). A rerun over the same data asks nothing again, a new file pays only for its own lines,
and every answer is written as it arrives (SQLite, committed per answer), so a run that fails half
way leaves what it was told for the next one. Answers without a verdict are cached too (a cut-off
one with its reason): asking the same deterministic judge again would get the same answer. Only
the asked model's answers are stored (ppg.judges.endpoint.same_model), with the name it answered
under, so one model's answers never stand for another's; an oversized answer is not stored.
Keys carry a version: rows written before answers were checked this way are never reused."""

import hashlib
import sqlite3
from pathlib import Path

from ppg.judges.endpoint import Answer

VERSION = "2"  # 2: answers checked for cut-offs and the answering model (the `unknown` column)


class VerdictCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, answer TEXT, "
                        "tokens_in INTEGER, tokens_out INTEGER)")
        if "unknown" not in [row[1] for row in self.db.execute("PRAGMA table_info(answers)")]:
            self.db.execute("ALTER TABLE answers ADD COLUMN unknown TEXT")  # a cache of an older version
        self.db.commit()

    @staticmethod
    def key(model: str, max_tokens: int, prompt: str) -> str:
        """model: the asked model."""
        return hashlib.sha256(f"v{VERSION}\0{model}\0{max_tokens}\0{prompt}".encode()).hexdigest()

    def get(self, key: str) -> Answer | None:
        row = self.db.execute("SELECT answer, model, unknown, tokens_in, tokens_out FROM answers WHERE key = ?",
                              (key,)).fetchone()
        return Answer(*row) if row else None

    def put(self, key: str, answer: Answer):
        self.db.execute("INSERT OR REPLACE INTO answers (key, model, answer, tokens_in, tokens_out, unknown) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (key, answer.model, answer.text, answer.tokens_in,
                                                      answer.tokens_out, answer.unknown))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self):
        self.db.close()
