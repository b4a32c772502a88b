"""RewardModelJudge: the per-turn reward model of `ppg train-judge` as a Judge, in process.

One text per judged line: the earlier lines of the dialogue (oldest first), the speaker's persona,
the line, and the question the score answers, last: a head on the last token's state gives the
logit of P(consistent | persona, history, line). Too long a text is cut from the left, so the
oldest history goes first and the line and question always stay. Lines are scored in batches of
similar length, no generation: this is the fast judge. reward = P(consistent); judge.persona = 1
when P >= 0.5 (the logged verdicts it learns from are prompt-to-line); judge.commitment is
unknown (null).
"""

import json
from pathlib import Path

from ppg.data.schema import Dialogue

QUESTION = "Is the new line consistent with the character's background and earlier lines?"


def turn_text(persona: str, speaker: str, line: str, earlier: list[tuple[str, str]]) -> str:
    """What the reward model reads for one line; earlier = (speaker, text), oldest first."""
    shown = "".join(f"{s}: {t}\n" for s, t in earlier)
    return f"Earlier lines:\n{shown}Character ({speaker}): {persona}\nNew line by {speaker}: {line}\n{QUESTION}"


def turn_texts(d: Dialogue, speaker: str, history: int) -> list[str]:
    """One text per line of speaker in d, each with up to `history` earlier lines."""
    out = []
    for i, ln in enumerate(d.lines):
        if ln.speaker == speaker:
            earlier = [(x.speaker, x.text) for x in d.lines[max(0, i - history):i]]
            out.append(turn_text(d.personas[speaker], speaker, ln.text, earlier))
    return out


def score_texts(model, tok, texts: list[str], max_length: int, batch_size: int = 32) -> list[float]:
    """P(consistent) per text: batched forward passes over texts sorted by length."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [0.0] * len(texts)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length).to(device)
            p = torch.sigmoid(model(**enc).logits[:, 0].float())
            for i, v in zip(idx, p.tolist()):
                out[i] = v
    return out


def load_reward_model(path: str | Path):
    """(model, tokenizer, judge.json) of a `ppg train-judge` output, on the evaluation device."""
    from transformers import AutoModelForSequenceClassification

    from ppg.models import eval_device, load_tokenizer

    path = Path(path)
    if not (path / "judge.json").exists():
        raise FileNotFoundError(f"judge.reward_model.path: {path} holds no reward model (run `ppg train-judge`)")
    tok = load_tokenizer(path)
    tok.padding_side, tok.truncation_side = "right", "left"
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(eval_device()).eval()
    return model, tok, json.loads((path / "judge.json").read_text())


class RewardModelJudge:
    """cfg: the judge section. keep_logged: leave a line whose reward is known as it is."""

    def __init__(self, cfg, keep_logged: bool = False):
        self.cfg, self.keep_logged = cfg, keep_logged
        self.model, self.tok, self.card = load_reward_model(cfg.reward_model.path)
        self.counts = {"judged_turns": 0, "kept_turns": 0}

    def identity(self) -> dict:
        return {"kind": "reward-model", "model": self.card["fingerprint"], "base": self.card["base"],
                "validation_auc": self.card["validation"]["auc"].get("mean")}

    def judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        out = [d.model_copy(deep=True) for d in dialogues]
        todo, texts = [], []
        for d in out:
            for s in d.evaluated_speakers:
                for ln, text in zip(d.turns(s), turn_texts(d, s, self.cfg.reward_model.history)):
                    if self.keep_logged and ln.reward is not None:
                        self.counts["kept_turns"] += 1
                    else:
                        todo.append(ln)
                        texts.append(text)
        who = self.identity()
        for ln, p in zip(todo, score_texts(self.model, self.tok, texts, self.cfg.reward_model.max_length)):
            ln.reward = round(p, 6)
            ln.judge = {"persona": int(p >= 0.5), "commitment": None, "p_consistent": round(p, 6), "by": who}
        self.counts["judged_turns"] += len(todo)
        return out
