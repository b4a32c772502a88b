"""The verdict cache: a judge's answers keyed by what produced them (the judge's model, its
answer budget and the exact prompt, which holds the template, the persona, the history shown and
the line). A rerun over the same data asks nothing again, a new file pays only for its own lines,
and every answer is written as it arrives (SQLite, committed per answer), so a run that fails half
way leaves what it was told for the next one. Answers without a verdict are cached too: asking
the same deterministic judge again would get the same answer."""

import hashlib
import sqlite3
from pathlib import Path


class VerdictCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, answer TEXT, "
                        "tokens_in INTEGER, tokens_out INTEGER)")
        self.db.commit()

    @staticmethod
    def key(model: str, max_tokens: int, prompt: str) -> str:
        return hashlib.sha256(f"{model}\0{max_tokens}\0{prompt}".encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, model: str, answer: str, tokens_in: int | None = None, tokens_out: int | None = None):
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                        (key, model, answer, tokens_in, tokens_out))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self):
        self.db.close()
