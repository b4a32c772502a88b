import random

import pytest
import torch

from ppg.config import SimConfig
from ppg.data.schema import Dialogue, write_dialogues
from ppg.judges.base import verdict_rates
from ppg.sim.judge import SimJudge
from ppg.returns import partial_returns
from ppg.sim.simulate import schedule, simulate
from ppg.sim.world import mentions


def test_same_seed_gives_byte_identical_output(tmp_path):
    cfg = SimConfig()
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        write_dialogues(tmp_path / f"{name}.jsonl", simulate("therapy", 30, 8, seed, cfg))
    a, b, c = ((tmp_path / f"{n}.jsonl").read_bytes() for n in "abc")
    assert a == b and a != c


@pytest.mark.parametrize("distance", [[1], [3], [5]])
def test_probes_come_exactly_d_turns_after_their_ask(distance):
    rng = random.Random(0)
    for _ in range(50):
        w = schedule(rng, 12, distance)
        assert w and all(probe - ask == distance[0] for _, ask, probe in w)
        assert all(w[i][2] < w[i + 1][1] for i in range(len(w) - 1))  # windows follow each other


def test_end_probes_take_the_last_turns():
    w = schedule(random.Random(1), 10, ["end"])
    asks, probes = [x[1] for x in w], [x[2] for x in w]
    assert asks == list(range(len(w))) and probes == list(range(9, 9 - len(w), -1))


def turn_rows(d):
    return [(ln.text, ln.reward, ln.judge) for ln in d.turns("persona")]


def test_an_invented_fact_scores_now_and_is_exposed_exactly_d_turns_later():
    cfg = SimConfig(domains={"d3": {"distance": [3], "known": 2}},
                    behaviour={"consistent": 1.0, "contradict": 0.0, "evasive": 0.0, "tempt": 1.0, "keep": 1.0})
    exposed = 0
    for d in simulate("d3", 40, 12, 0, cfg):
        facts, known = d.meta["sim"]["persona"]["facts"], d.meta["sim"]["persona"]["known"]
        rows = turn_rows(d)
        for a, ask, probe in d.meta["sim"]["windows"]:
            if a in known:
                assert rows[ask][1] == 1.0 and rows[probe][1] == 1.0
                continue
            invented = mentions(rows[ask][0])[0][1]
            assert rows[ask][1] == 1.0  # the tempting reply is rewarded now
            if invented != facts[a]:
                assert rows[probe][1] == 0.0 and rows[probe][2]["probe"]  # and exposed at the probe
                exposed += 1
        # the K=d+1 return sees the loss the greedy one cannot
        r = torch.tensor([[x[1] for x in rows]])
        m = torch.ones_like(r, dtype=torch.bool)
        g, k4 = partial_returns(r, m, "greedy")[0], partial_returns(r, m, "kstep", k=4)[0]
        for a, ask, probe in d.meta["sim"]["windows"]:
            if a not in known and mentions(rows[ask][0])[0][1] != facts[a]:
                assert g[ask] == 1.0 and k4[ask] == r[0, ask:probe + 1].sum()
    assert exposed > 20


def test_segment_starts_are_the_asks():
    for d in simulate("therapy", 20, 8, 3, SimConfig()):
        asks = sorted({0} | {ask for _, ask, _ in d.meta["sim"]["windows"]})
        assert d.meta["segment_starts"]["persona"] == asks


PERSONA = {"name": "Maya", "facts": {"city": "Leeds", "job": "nurse", "pet": "parrot", "hobby": "chess",
                                     "food": "curry", "sibling": "one sister", "instrument": "harp", "car": "red Fiat"},
           "known": ["city", "job"]}


def judge(partner_and_replies, evasive_reward=0.5):
    lines = []
    for p, r in partner_and_replies:
        lines += [{"speaker": "partner", "text": p}, {"speaker": "persona", "text": r}]
    d = Dialogue.model_validate({"dialogue_id": "x", "domain": "t", "source": "test",
                                 "personas": {"persona": "I am Maya.", "partner": ""},
                                 "evaluated_speakers": ["persona"], "lines": lines})
    return SimJudge(evasive_reward).verdicts(d, "persona", PERSONA), d


def test_sim_judge_on_planted_replies():
    v, d = judge([
        ("So, where do you live these days?", "Oh, I live up in leeds, near the river."),      # consistent, free text
        ("What do you do for work?", "These days I work as a pilot."),                          # contradicts persona
        ("Do you have any pets?", "I have a beagle, he is lovely."),                            # open: a new commitment
        ("Ha, nice. How has your week been?", "Great, my beagle and I went to Leeds."),         # consistent again
        ("What pet did you say you have?", "A ferret, actually."),                              # contradicts line 5
        ("What's your favourite food?", "Hmm, I'd rather not get into that."),                  # evasive after an ask
        ("Which food did you say you love most?", "The weather is nice today."),               # dodges a probe
        ("Seen any good films lately?", "Not really, I mostly read."),                          # small talk
    ])
    assert [x.reward for x in v] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.0, 1.0]
    assert [x.persona for x in v] == [1, 0, 1, 1, 1, 1, 1, 1]
    assert [x.commitment for x in v] == [1, 1, 1, 1, 0, 1, 1, 1]
    assert v[4].conflicts == [5, 7]  # the two earlier lines that said beagle
    assert [x.answered for x in v] == [True, True, True, False, True, False, False, False]
    judged = SimJudge(0.5).judge([d.model_copy(update={"meta": {"sim": {"persona": PERSONA}}})])[0]
    rates = verdict_rates(judged.turns("persona"))  # what evaluation reads of any judge's verdicts
    assert rates["coverage"] == pytest.approx(4 / 6) and rates["consistency"] == pytest.approx(6 / 8)
    assert [ln.reward for ln in judged.turns("persona")] == [x.reward for x in v]


def test_a_revealed_fact_joins_the_story():
    v, _ = judge([("Funny thing, a friend of yours told me this about you: You have a parrot at home. Is that right?",
                "No, not at all. I have a rabbit at home."),
               ("Funny thing, a friend of yours told me this about you: You play the harp. Is that right?",
                "Yes, that's right. I play the harp.")])
    assert [(x.persona, x.reward, x.probe) for x in v] == [(0, 0.0, True), (1, 1.0, True)]


def test_require_and_evasive_reward_are_checked():
    with pytest.raises(ValueError, match="^evasive_reward:"):
        SimJudge(1.0)
    with pytest.raises(ValueError, match="^require:"):
        SimJudge(0.5, "either")
    with pytest.raises(ValueError, match="^domain:"):
        simulate("space", 1, 8, 0, SimConfig())


@pytest.mark.parametrize("d,probes", [(1, 3), (2, 2), (3, 1)])
def test_each_fact_is_probed_probes_times_in_a_row_from_d_turns_after_its_ask(d, probes):
    rng = random.Random(0)
    for _ in range(50):
        w = schedule(rng, 14, [d], probes)
        by_ask = {}
        for a, ask, probe in w:
            by_ask.setdefault((a, ask), []).append(probe)
        assert by_ask and all(ps == list(range(ask + d, ask + d + probes)) for (_, ask), ps in by_ask.items())
        spans = sorted((ask, max(ps)) for (_, ask), ps in by_ask.items())
        assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))  # windows follow each other
        assert spans[-1][1] <= 13


def test_one_probe_keeps_the_schedule_it_always_had():
    # the default world is unchanged by the probes knob: same windows, same bytes of data
    a, b = random.Random(5), random.Random(5)
    assert schedule(a, 12, [1, 2, "end"]) == schedule(b, 12, [1, 2, "end"], 1)


def test_persona_lines_carry_their_turn_kind():
    cfg = SimConfig(domains={"x": {"distance": [2], "known": 4}})
    for d in simulate("x", 20, 8, 0, cfg):
        facts = d.meta["sim"]["persona"]
        kinds = [ln.meta["kind"] for ln in d.turns("persona")]
        want = ["filler"] * 8
        for a, ask, probe in d.meta["sim"]["windows"]:
            want[ask] = "ask-stated" if a in facts["known"] else "ask-open"
            want[probe] = "probe"
        assert kinds == want
        assert all("kind" not in ln.meta for ln in d.lines if ln.speaker == "partner")


@pytest.mark.parametrize("d,probes", [(1, 3), (2, 2), (3, 1)])
def test_expected_returns_of_invent_and_dodge_match_simulated_averages(d, probes):
    from ppg.sim.expected import ask_returns

    cfg = SimConfig(domains={"x": {"distance": [d], "known": 2, "probes": probes}})
    sums = {}  # (reply, probes seen) -> rewards of the ask and the first m probes, per open ask
    for dlg in simulate("x", 1500, 2 * (d + probes), 7, cfg):
        rewards = [ln.reward for ln in dlg.turns("persona")]
        judged = [ln.judge for ln in dlg.turns("persona")]
        known = dlg.meta["sim"]["persona"]["known"]
        asks = {}
        for a, ask, probe in dlg.meta["sim"]["windows"]:
            asks.setdefault((a, ask), []).append(probe)
        for (a, ask), ps in asks.items():
            if a in known:
                continue
            reply = "invent" if judged[ask]["answered"] else "dodge"
            for m in range(probes + 1):
                sums.setdefault((reply, m), []).append(rewards[ask] + sum(rewards[p] for p in sorted(ps)[:m]))
    for (reply, m), xs in sums.items():
        want = ask_returns(d + m if m else 1, d, probes, cfg.evasive_reward, cfg.behaviour)
        assert want["probes_seen"] == m
        mean = sum(xs) / len(xs)
        se = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5 / len(xs) ** 0.5
        assert len(xs) > 500 and abs(mean - want[reply]) < 4 * se + 1e-9, (reply, m, mean, want[reply], se)


def test_more_probes_make_exposure_cost_more_and_need_a_longer_horizon():
    from ppg.sim.expected import ask_returns, smallest_k_for_dodge

    b = SimConfig().behaviour
    assert smallest_k_for_dodge(2, 1, 0.5, b) == 3  # d + 1: the first probe already flips it
    assert smallest_k_for_dodge(2, 3, 0.0, b) == 4  # nothing for a dodge: two probes are needed
    gaps = [ask_returns(None, 2, p, 0.5, b)["dodge_minus_invent"] for p in (1, 2, 3)]
    assert gaps == sorted(gaps) and gaps[0] == pytest.approx(0.5 + 0.855 - 1 - 0.931 / 8)
    assert ask_returns(1, 2, 3, 0.5, b)["dodge_minus_invent"] == -0.5  # greedy: 0.5 against 1


def test_the_settling_study_world_is_the_one_its_prediction_is_computed_for(tmp_path):
    from pathlib import Path

    from ppg.overlay import merged_params
    from ppg.sim.expected import smallest_k_for_dodge
    from ppg.study.sim import SETTING, cells, study_params

    root = Path(__file__).resolve().parents[1]
    p = merged_params(root / "params.yaml", root / "params.kstudy.yaml")
    s = p.study
    cp = study_params(p, distances=[2], data=tmp_path, here=tmp_path, model="tiny", policies=["k4"],
                      weights=s.weights["kind"], steps=1, lr=1e-3, batch=1, dialogues=3, seed=0)
    assert cp.sim.domains[SETTING] == {"distance": [2], "known": s.known, "probes": 2}
    assert cp.sim.evasive_reward == 0.2 and cp.returns.baseline == "turn_kind"
    # the pre-stated K* = d + 2 at every d of the grid, and the grid has a horizon on each side of it
    ks = {c["policy"] for c in cells(s)}
    # the seeds added for the test train offline cells only; online cells keep the pilot's seeds
    assert {c["seed"] for c in cells(s) if c["weights"] == "online"} == {0, 1, 2}
    assert {c["seed"] for c in cells(s) if c["weights"] == "kind"} == set(s.seeds) and len(s.seeds) > 3
    for d in s.distances:
        k_star = smallest_k_for_dodge(d, s.probes, s.evasive_reward, p.sim.behaviour)
        assert k_star == d + 2 and {f"k{k_star - 1}", f"k{k_star}", f"k{k_star + 1}"} <= ks | {"greedy"}
