"""The policy's replies: a KV cache kept across turns gives every dialogue of a batch exactly the
next-token logits a plain forward pass over that dialogue alone gives, and the cached and the
re-encoding backends play the same dialogues."""

import pytest
import torch

from ppg.generation import CachedReplies, GenerationConfig, warp
from ppg.rollout import Episode, play


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), load_tokenizer(tiny_model)


def test_cached_replies_see_what_a_forward_pass_over_the_dialogue_alone_sees(tiny, monkeypatch):
    from ppg import generation

    model, tok = tiny
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9)
    # a large end set makes replies of every length happen: ended at once, ended mid-way, cut at 6
    eos = set(range(6, 700))
    replier = CachedReplies(model, 4, gen, eos, tok.pad_token_id)
    steps, sample = [], generation.sample_next  # the logits each decoding step samples from, per call

    def seen(logits, g):
        steps.append(logits.float().clone())
        return sample(logits, g)

    monkeypatch.setattr(generation, "sample_next", seen)
    record, context = [], [[] for _ in range(4)]
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    lengths = []
    for rows in ([0, 1, 2, 3], [0, 1, 2, 3], [0, 2, 3], [2]):  # dialogues end between turns
        new = [torch.randint(6, 2000, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
               for _ in rows]  # new ids of different lengths per row: padding inside the cache
        steps.clear()
        with torch.no_grad():
            replies = replier.reply(rows, new)
        for b, (r, x, y) in enumerate(zip(rows, new, replies)):
            context[r] += x
            record += [(r, len(context[r]) + s, steps[s][b]) for s in range(len(y))]  # reply id s saw n ids
            context[r] += y
            lengths.append(len(y))
    assert {1, 6} <= set(lengths) and any(1 < n < 6 for n in lengths)
    assert len(record) == sum(lengths)
    worst = 0.0
    for row, n, logits in record:  # teacher forcing: the same sampled ids, one dialogue alone
        with torch.no_grad():
            alone = model(torch.tensor([context[row][:n]])).logits[0, -1]
        worst = max(worst, (alone - logits).abs().max().item())
    assert worst < 1e-5


class Scripted:
    def __init__(self, lengths):
        self.lengths = lengths

    def reply(self, episodes):
        return [f"tell me about line {len(e.partner_lines())}" if len(e.partner_lines()) < self.lengths[e.dialogue_id]
                else None for e in episodes]


class NoJudge:
    def judge(self, dialogues):
        return dialogues


def test_cached_and_reencoding_backends_play_the_same_greedy_dialogues(tiny):
    model, tok = tiny
    lengths = {"a": 3, "b": 1, "c": 4}
    personas = ["You are a calm librarian who has lived in Oslo all her life.", "A pilot.", "You teach maths."]
    eps = [Episode(i, g, "bot", p, "user", "chat") for g, (i, p) in enumerate(zip(lengths, personas))]
    out, stats = {}, {}
    for backend in ("generate", "cache"):
        gen = GenerationConfig(max_new_tokens=5, temperature=0.0, batch_size=3, backend=backend)
        stats[backend] = {}
        out[backend] = play(model, tok, eps, Scripted(lengths), NoJudge(), gen, 0, with_tokens=True,
                            stats=stats[backend])
    for d0, r0, d1, r1 in zip(*out["generate"], *out["cache"]):
        assert r0.input_ids == r1.input_ids and r0.turn_index == r1.turn_index and r0.ended == r1.ended
        assert [ln.text for ln in d0.lines] == [ln.text for ln in d1.lines]
    # the cache encodes every id once: all but each reply's sampled ids, which decoding feeds one per
    # step, and the last reply's final id, which nothing reads
    rolls = out["cache"][1]
    sampled = [sum(1 for i in r.turn_index if i >= 0) for r in rolls]
    replies = [max(r.turn_index) + 1 for r in rolls]
    once = sum(len(r.input_ids) - (s - n) - 1 for r, s, n in zip(rolls, sampled, replies))
    assert stats["cache"]["prefilled"] == once
    # re-encoding reads each dialogue's whole context again at every turn
    again = sum(r.turn_index.index(t) for r in rolls for t in range(max(r.turn_index) + 1))
    assert stats["generate"]["prefilled"] == again > stats["cache"]["prefilled"]


def chi_square(draws: torch.Tensor, target: torch.Tensor, bins: int = 10) -> tuple[float, int]:
    """Pearson's statistic of draws against target over bins of about equal target mass (tokens by
    descending probability), and its degrees of freedom. A truncation to the likeliest tokens
    piles every draw into the first bins."""
    order = target.argsort(descending=True)
    before = target[order].cumsum(0) - target[order]
    bin_of = torch.empty_like(order)
    bin_of[order] = (before * bins).long().clamp(max=bins - 1)
    expected = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_of, target.double()) * len(draws)
    observed = torch.bincount(bin_of[draws], minlength=bins).double()
    keep = expected > 0
    return float(((observed - expected)[keep] ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_both_backends_and_the_llm_partner_sample_the_distribution_warp_gives(tiny, temperature, top_p):
    """The first sampled token of 3000 identical rows, by each path, against warp's distribution
    over the model's next-token logits (chi-square over 10 equal-mass bins, p < 0.0005). transformers'
    own default top-k of 50 (of a 2000-token vocabulary) fails it by orders of magnitude."""
    from ppg.generation import BACKENDS
    model, tok = tiny
    n = 3000
    gen = GenerationConfig(max_new_tokens=1, temperature=temperature, top_p=top_p, batch_size=n)

    def target_of(ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        return warp(logits[None].float(), gen).softmax(-1)[0]

    prompt = tok("I am Maya and I", add_special_tokens=False).input_ids
    target = target_of(prompt)
    assert float(target.sort(descending=True).values[50:].sum()) > 0.5  # a top-50 cut would show
    torch.manual_seed(0)
    draws = {}
    for name, cls in BACKENDS.items():
        replies = cls(model, n, gen, set(), tok.pad_token_id).reply(list(range(n)), [prompt] * n)
        draws[name] = (torch.tensor([r[0] for r in replies]), target)
    from ppg.partner import partner_chat
    from ppg.partner_models import InProcessPartner, partner_messages

    eps = [Episode(f"e{i}", i, "Maya", "I am Maya.", "Friend", "chatting") for i in range(n)]
    partner = InProcessPartner(model, tok, 1, gen, partner_chat)
    partner.reply(eps)  # the partner's first line in every dialogue, from its own KV-cached batch
    first = torch.tensor([partner.last[e.dialogue_id][0] for e in eps])
    opening = tok.apply_chat_template(partner_messages(eps[0], *partner_chat(eps[0])), add_generation_prompt=True,
                                      tokenize=False)
    draws["partner"] = (first, target_of(tok(opening, add_special_tokens=False).input_ids))
    tests = {name: chi_square(d, t) for name, (d, t) in draws.items()}
    assert {name: stat for name, (stat, df) in tests.items() if not (df >= 8 and stat < 30.0)} == {}
    cut = torch.zeros_like(target)
    top = target.argsort(descending=True)[:50]
    cut[top] = target[top] / target[top].sum()
    assert chi_square(torch.multinomial(cut, n, replacement=True), target)[0] > 1000  # what the test catches


def test_generation_settings_name_the_key_they_break():
    from ppg.generation import generation_config

    assert generation_config("eval.generation", {"max_new_tokens": 4}).backend == "cache"
    with pytest.raises(ValueError, match=r"eval.generation.backend: expected cache or generate, got 'vllm'"):
        generation_config("eval.generation", {"backend": "vllm"})
    with pytest.raises(ValueError, match=r"online.generation: expected a mapping with keys among .*top_k"):
        generation_config("online.generation", {"top_k": 50})
    with pytest.raises(ValueError, match=r"online.generation: .*top_p in \(0, 1\]"):
        generation_config("online.generation", {"top_p": 0})


def test_questions_after_a_dialogue_share_its_encoding_and_get_the_same_answers(tiny):
    from ppg.data.schema import Dialogue
    from ppg.evaluate.online import answers_after

    model, tok = tiny

    def dialogue(i, n):
        lines = []
        for t in range(n):
            lines += [{"speaker": "user", "text": f"how was day {t}?"}, {"speaker": "bot", "text": f"fine {i} {t}"}]
        return Dialogue.model_validate({"dialogue_id": f"d{i}", "domain": "chat", "source": "test",
                                        "personas": {"bot": f"You are person {i}.", "user": ""},
                                        "evaluated_speakers": ["bot"], "lines": lines})

    ds = [dialogue(0, 1), dialogue(1, 3), dialogue(2, 2)]
    asks = [(ds[0], "Where do you live?"), (ds[0], "What is your job?"), (ds[1], "Who do you trust?"),
            (ds[2], "Where do you live?"), (ds[2], "Any pets?"), (ds[2], "Your age?")]
    answers = {b: answers_after(model, tok, asks, GenerationConfig(max_new_tokens=6, batch_size=4, backend=b))
               for b in ("generate", "cache")}
    assert answers["cache"] == answers["generate"] and all(isinstance(a, str) for a in answers["cache"])


def test_a_prefill_gets_the_last_positions_logits_without_copying_the_output_embedding(tiny):
    """hidden_states[:, -1:] of a prefill is a strided view; multiplied by an output embedding
    that needs no gradient (an evaluated model's), torch.matmul expanded the embedding to
    [B, H, V] and copied it (0.5 s a prefill for SmolLM2, most of one). The logits must be the
    full forward's, without that copy."""
    import copy

    from torch.profiler import profile

    model, tok = tiny
    model = copy.deepcopy(model).requires_grad_(False)  # as evaluation and serving hold it
    ids = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]]
    greedy = GenerationConfig(temperature=0.0, max_new_tokens=1)  # the first id: the prefill's argmax
    replier = CachedReplies(model, 2, greedy, {tok.eos_token_id}, tok.pad_token_id)
    with torch.no_grad(), profile(record_shapes=True) as prof:
        first = replier.reply([0, 1], ids)
    hidden, vocab = model.config.hidden_size, model.get_output_embeddings().weight.shape[0]
    expanded = [e.name for e in prof.events() if any(s == [2, hidden, vocab] for s in e.input_shapes)]
    assert expanded == []  # no op ever saw the embedding broadcast over the batch
    with torch.no_grad():
        full = model(input_ids=torch.tensor(ids)).logits[:, -1]
    assert first == [[int(i)] for i in full.argmax(-1)]


def test_a_growing_cache_gives_a_dynamic_caches_logits_and_appends_in_place(tiny):
    """transformers' DynamicCache copies a layer's whole cache for every decoded id (torch.cat);
    the growing cache writes the new ids into spare room. Same logits through a prefill, decoding
    steps, rows dropped and repeated (questions branching off one dialogue), more steps, ids taken
    back, rows reordered, and the cache emptied for a batch of another size."""
    from transformers import DynamicCache

    from ppg.kv_cache import growing_cache

    model, _ = tiny
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randint(6, 2000, (3, 10), generator=g)] + [torch.randint(6, 2000, (3, 1), generator=g)
                                                                for _ in range(5)]
    later = [torch.randint(6, 2000, (4, 1), generator=g) for _ in range(3)]
    runs = {}
    for name, cache in (("dynamic", DynamicCache(config=model.config)), ("growing", growing_cache(model.config))):
        logits, where = [], []
        with torch.no_grad():
            for ids in chunks:
                logits.append(model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1])
                where.append(cache.layers[0].keys.data_ptr())
            cache.batch_select_indices(torch.tensor([0, 2, 2, 1]))
            for ids in later:
                logits.append(model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1])
            cache.crop(-2)  # the last two ids taken back, then one more
            logits.append(model(input_ids=later[0], cache=cache, use_cache=True).logits[:, -1])
            cache.reorder_cache(torch.tensor([3, 2, 1, 0]))
            logits.append(model(input_ids=later[1], cache=cache, use_cache=True).logits[:, -1])
            cache.reset()  # emptied, then a batch of another size
            logits.append(model(input_ids=chunks[0][:2], cache=cache, use_cache=True).logits[:, -1])
        runs[name] = logits, where
    assert all(torch.equal(a, b) for a, b in zip(runs["dynamic"][0], runs["growing"][0]))
    assert len(set(runs["growing"][1][1:])) == 1  # five decoding steps, one buffer
    with pytest.raises(ValueError, match="a batch of 1 rows for a cache of 2"):
        cache.layers[0].update(*(torch.zeros(1, *cache.layers[0].keys.shape[1:2], 1, cache.layers[0].keys.shape[-1])
                                 for _ in range(2)))


def test_top_p_among_the_candidates_keeps_the_nucleus_warp_keeps():
    """sample_next draws among the CANDIDATES most likely ids instead of sorting the vocabulary:
    the kept ids and their probabilities must be warp's. bfloat16 logits tie often, and a tie at
    the edge of the nucleus is cut where each sort happens to order it: there the kept
    probabilities must agree, not the ids. Rows whose nucleus is larger than the candidates
    fall back to warp."""
    from ppg.generation import CANDIDATES, nucleus

    torch.manual_seed(0)
    for temperature, top_p in ((0.7, 0.9), (1.0, 0.5), (1.3, 0.8)):
        gen = GenerationConfig(max_new_tokens=4, temperature=temperature, top_p=top_p)
        for dtype in (torch.float32, torch.bfloat16):
            logits = (torch.randn(8, 49152) * 4).to(dtype)
            ids, probs = nucleus(logits, gen)
            ours = torch.zeros(8, 49152).scatter(1, ids, probs)
            ours /= ours.sum(-1, keepdim=True)
            theirs = warp(logits, gen).softmax(-1)
            if dtype == torch.float32:
                assert torch.equal(ours > 0, theirs > 0)
                assert (ours - theirs).abs().max() < 1e-6
            kept = [(o[o > 0].sort().values, t[t > 0].sort().values) for o, t in zip(ours, theirs)]
            assert all(len(o) == len(t) and (o - t).abs().max() < 1e-5 for o, t in kept)
    assert nucleus(torch.zeros(2, 4 * CANDIDATES), GenerationConfig(max_new_tokens=4, top_p=0.9)) is None
