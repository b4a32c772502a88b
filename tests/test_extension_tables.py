"""Each extension point is one table entry: a toy importer, credit rule, judge and metric are
added to their table alone (monkeypatch.setitem) and run through the code behind `ppg import`,
`ppg returns`, `ppg judge` and evaluation + the gate. Unknown names are refused naming the known."""

import json
import math
import random

import pytest
from typer.testing import CliRunner

from ppg.cli import app
from ppg.data.schema import Dialogue, read_dialogues, write_dialogues

RUN = CliRunner()


def dialogue(i: int, rewards=None) -> Dialogue:
    rewards = rewards or [1.0, 0.0, 1.0, 1.0, 0.0]
    lines = [x for t, r in enumerate(rewards) for x in (
        {"speaker": "user", "text": f"question {t}?"},
        {"speaker": "bot", "text": "yes" if t % 2 else f"a longer answer number {t} from me", "reward": r})]
    return Dialogue.model_validate({"dialogue_id": f"d{i}", "domain": "chatting", "source": "toy",
                                    "personas": {"bot": f"I am bot {i}.", "user": ""}, "evaluated_speakers": ["bot"],
                                    "lines": lines})


def read_tsv(path, stats, label):
    """A toy format: one line per dialogue, `id <TAB> persona <TAB> bot line | bot line ...`."""
    for row in path.read_text().splitlines():
        did, persona, said = row.split("\t")
        lines = [x for t, text in enumerate(said.split(" | ")) for x in (
            {"speaker": "user", "text": f"q{t}"}, {"speaker": "bot", "text": text})]
        stats.add("chatting", dialogues=1, lines=len(lines), judged_lines=0)
        yield Dialogue.model_validate({"dialogue_id": f"{label}:{did}", "domain": "chatting", "source": "tsv",
                                       "personas": {"bot": persona, "user": ""}, "evaluated_speakers": ["bot"],
                                       "lines": lines})


def test_a_toy_importer_is_one_table_entry(tmp_path, monkeypatch):
    from ppg.data.importers import IMPORTERS, Importer

    monkeypatch.setitem(IMPORTERS, "tsv", Importer(read_tsv, (".tsv",)))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tsv").write_text("1\tI am Ann.\thello | I bake\n2\tI am Bo.\thi\n")
    (tmp_path / "in" / "notes.json").write_text("{}")  # not a file of this format: reported, not read
    (tmp_path / "params.yaml").write_text("")  # a stage needs a params file: the defaults will do
    r = RUN.invoke(app, ["import", "--source", f"tsv:{tmp_path / 'in'}", "--out", str(tmp_path / "out"),
                         "--params", str(tmp_path / "params.yaml")])
    assert r.exit_code == 0, r.output
    ds = read_dialogues(tmp_path / "out" / "dialogues.jsonl")
    assert [(d.dialogue_id, [ln.text for ln in d.turns("bot")]) for d in ds] == [
        ("a:1", ["hello", "I bake"]), ("a:2", ["hi"])]
    r = RUN.invoke(app, ["import", "--source", f"csvx:{tmp_path}", "--params", str(tmp_path / "params.yaml")])
    assert r.exit_code == 2 and "('consistent-llms', 'synthetic-persona-chat', 'chitchat', 'jsonl', 'tsv')" in r.output


def test_a_toy_credit_rule_is_one_table_entry(tmp_path, monkeypatch):
    """`half`: turn t is credited with the first half (rounded up) of what is left of the dialogue."""
    import torch

    from ppg.returns import POLICIES, CreditRule

    monkeypatch.setitem(POLICIES, "half", CreditRule(
        lambda t, k, seg, n, T: torch.maximum(t + (n[:, None] - t + 1) // 2, t + 1).clamp(max=T), uses_length=True))
    rng = random.Random(0)
    ds = [dialogue(i, [rng.choice([0.0, 1.0, None]) for _ in range(rng.randint(1, 7))]) for i in range(20)]
    write_dialogues(tmp_path / "d.jsonl", ds)
    r = RUN.invoke(app, ["returns", str(tmp_path / "d.jsonl"), "--policies", "half,greedy", "--out",
                         str(tmp_path / "w.jsonl"), "--params", str(tmp_path / "none.yaml")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    for d in ds:  # a naive loop over the definition
        rewards = [ln.reward for ln in d.turns("bot")]
        n = len(rewards)
        for t in range(n):
            credited = rewards[t:t + max(1, math.ceil((n - t) / 2))]
            want = None if None in credited else sum(credited)
            [got] = [x["half"] for x in rows if x["dialogue_id"] == d.dialogue_id and x["turn"] == t]
            assert got == want, (d.dialogue_id, t, rewards)
    assert len(rows) == sum(len(d.turns("bot")) for d in ds)
    r = RUN.invoke(app, ["returns", str(tmp_path / "d.jsonl"), "--policies", "halves", "--params", "none.yaml"])
    assert r.exit_code == 2 and "expected greedy, k<K> with K >= 1 (e.g. k3), full, segment, bc, half" in r.output


class LengthJudge:
    """A toy judge: a reply under 20 characters contradicts nothing it could know (reward 1)."""

    def __init__(self):
        self.counts = {"turns": 0}

    def identity(self):
        return {"kind": "length", "model": "chars<20"}

    def judge(self, dialogues):
        out = [d.model_copy(deep=True) for d in dialogues]
        for d in out:
            for ln in d.turns(d.evaluated_speakers[0]):
                ok = int(len(ln.text) < 20)
                ln.reward, ln.judge = float(ok), {"persona": ok, "commitment": None, "by": self.identity()}
                self.counts["turns"] += 1
        return out


def test_a_toy_judge_is_one_table_entry(tmp_path, monkeypatch):
    from ppg.config import JudgeConfig, MlflowConfig, Params
    from ppg.judges.kinds import JUDGES, JudgeKind
    from ppg.judges.stage import judge_dataset

    with pytest.raises(ValueError, match="judge.kind: 'length' is not a judge kind; known: labels, llm, reward-model"):
        JudgeConfig(kind="length")
    monkeypatch.setitem(JUDGES, "length", JudgeKind(lambda cfg, progress: LengthJudge(),
                                                    who=lambda cfg: {"model": "chars<20"}, reads=lambda cfg: {}))
    write_dialogues(tmp_path / "logs" / "dialogues.jsonl", [dialogue(0, [None] * 5)])
    p = Params(judge=JudgeConfig(kind="length", overwrite=True),
               mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "a")))
    s = judge_dataset(p, tmp_path / "logs", tmp_path / "judged")
    [d] = read_dialogues(tmp_path / "judged" / "dialogues.jsonl")
    assert [ln.reward for ln in d.turns("bot")] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert s["judge"] == {"kind": "length", "model": "chars<20"} and s["counts"] == {"turns": 5}


def test_a_toy_metric_is_one_table_entry_that_evaluation_produces_and_the_gate_holds(monkeypatch):
    from ppg.config_ops import RegistryConfig
    from ppg.evaluate.online import online_metrics
    from ppg.evaluate.report import table
    from ppg.gate import decide
    from ppg.metrics import HIGHER, METRICS, Metric

    with pytest.raises(ValueError, match="'online.brevity' is not a metric the evaluation produces; known"):
        decide("online.brevity", {}, None, None, None, RegistryConfig(thresholds={}))
    monkeypatch.setitem(METRICS, "online.brevity", Metric(
        HIGHER, "online", lambda lines, settings: sum(len(ln.text) < 20 for ln in lines) / len(lines)))
    def wordy(d):
        return d.model_copy(update={"lines": [ln.model_copy(update={"text": ln.text + " indeed, my friend"})
                                              for ln in d.lines]})

    short, chatty = [dialogue(i) for i in range(12)], [wordy(dialogue(i)) for i in range(12)]
    champ, chal = {"online": online_metrics(chatty)}, {"online": online_metrics(short)}
    assert champ["online"]["brevity"]["mean"] == 0.0 and chal["online"]["brevity"]["mean"] == pytest.approx(0.4)
    head, _, row = table({"k3": chal}).splitlines()
    assert head.endswith("| online.brevity |") and row.endswith("| 0.400 [0.400, 0.400] |")
    cfg = RegistryConfig(thresholds={"online.brevity": 0.5}, non_inferiority={}, min_pairs=5)
    held = decide("online.reward", chal, None, None, None, cfg)
    assert not held["promoted"] and "below the thresholds: online.brevity = 0.4" in held["reason"]
    cfg = RegistryConfig(thresholds={}, non_inferiority={}, min_pairs=5, margin=0.0)
    got = decide("online.brevity", chal, champ, None, None, cfg)
    assert got["promoted"] and got["difference"]["mean"] == pytest.approx(0.4) and got["difference"]["n"] == 12
