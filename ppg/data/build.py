"""Dataset building: canonical dialogues -> token sequences with per-token turn indices and
per-turn weights of every requested policy class, split by persona.

One sequence per (dialogue, evaluated speaker): the speaker's persona is the system prompt, its
lines are `assistant` messages (the turns), the partner's are `user` messages, rendered with the
tokenizer's chat template. The tokens of turn t's content and its end-of-turn marker carry turn
index t; every other token carries -1. Weights come from ppg.returns over the WHOLE dialogue, so
a window cut from a long dialogue keeps the credit its turns earned from later turns.
"""

import json
import random
from dataclasses import dataclass

import numpy as np
import torch

from ppg.data.schema import DataError, Dialogue
from ppg.data.turns import persona_groups, turn_batch
from ppg.returns import policy_weights


@dataclass
class Rendered:
    text: str
    region_end: np.ndarray  # char end of region r: r = 0 is the persona, r = i + 1 is line i
    content_start: np.ndarray  # char where the region's own text starts
    target_end: np.ndarray  # char end of the text + end-of-turn marker (targets stop here)
    turn: np.ndarray  # turn index of region r (-1: persona or partner line)
    content_end: np.ndarray  # char end of the region's own text (no marker)


def end_of_turn_marker(tok) -> str:
    """What the chat template writes right after an assistant message (e.g. `<|im_end|>`)."""
    probe = "QZXJ-probe"
    text = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                    {"role": "assistant", "content": probe}], tokenize=False)
    return text[text.rindex(probe) + len(probe):].rstrip()


def sentinel(i: int) -> str:
    """A stand-in for message i when a chat template is rendered to find where messages go:
    private-use code points, never in a role header."""
    return f"\ue000{i}\ue001"


def render(d: Dialogue, speaker: str, tok, eot: str) -> Rendered:
    """The chat-template text of one (dialogue, speaker) sequence and where each message sits in
    it. Positions come from the template itself: it is rendered once more with a sentinel in
    place of every message, so a line such as "is" is found where the template put it, never
    inside a role header ("assistant") that happens to contain it."""
    messages = [{"role": "system", "content": d.personas[speaker]}]
    messages += [{"role": "assistant" if ln.speaker == speaker else "user", "content": ln.text} for ln in d.lines]
    try:
        text = tok.apply_chat_template(messages, tokenize=False)
        skeleton = tok.apply_chat_template([{**m, "content": sentinel(i)} for i, m in enumerate(messages)],
                                           tokenize=False)
    except Exception as e:  # templates that demand user-first or strict alternation
        raise DataError(f"dialogue {d.dialogue_id!r} (speaker {speaker!r}): the chat template "
                        f"rejects it: {e}") from None
    ends, starts, target_ends, turns, t = [], [], [], [], 0
    content_ends = []
    rebuilt, cursor = [], 0
    for i, m in enumerate(messages):
        at = skeleton.find(sentinel(i), cursor)
        where = "personas" if i == 0 else f"lines.{i - 1}.text"
        if at < 0:
            raise DataError(f"dialogue {d.dialogue_id!r}: field {where}: the chat template does not write "
                            f"this message once, verbatim (it drops or repeats message text)")
        rebuilt.append(skeleton[cursor:at])
        start = sum(map(len, rebuilt))
        rebuilt.append(m["content"])
        cursor = at + len(sentinel(i))
        pos = start + len(m["content"])
        starts.append(start)
        ends.append(pos)
        content_ends.append(pos)
        target_ends.append(pos)
        turns.append(t if m["role"] == "assistant" else -1)
        t += m["role"] == "assistant"
    rebuilt.append(skeleton[cursor:])
    if "".join(rebuilt) != text:
        raise DataError(f"dialogue {d.dialogue_id!r} (speaker {speaker!r}): the chat template rewrites "
                        f"message text (its output differs from the messages placed verbatim)")
    for i in range(len(messages)):  # a turn's targets run through its end-of-turn marker
        if text.startswith(eot, ends[i]):
            ends[i] = target_ends[i] = ends[i] + len(eot)
    ends[-1] = len(text)  # trailing template text belongs to the last region
    return Rendered(text, np.array(ends), np.array(starts), np.array(target_ends), np.array(turns),
                    np.array(content_ends))


def encode(rendered: list[Rendered], tok) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids and char offsets of each rendered sequence. The template's own text is tokenized
    as usual (its role and end-of-turn markers become their special tokens), but the MESSAGES are
    tokenized with special tokens split into plain text: a line that contains "<|im_end|>" or a
    role header stays words, it cannot forge a turn. Batched: every piece of every sequence in two
    tokenizer calls."""
    pieces = []  # (sequence, char start, text, is a message)
    for b, r in enumerate(rendered):
        cursor = 0
        for start, end in zip(r.content_start, r.content_end):
            pieces += [(b, cursor, r.text[cursor:start], False), (b, start, r.text[start:end], True)]
            cursor = end
        pieces.append((b, cursor, r.text[cursor:], False))
    pieces = [p for p in pieces if p[2]]
    enc = {}
    for message in (False, True):
        mine = [p for p in pieces if p[3] == message]
        if mine:
            e = tok([p[2] for p in mine], add_special_tokens=False, return_offsets_mapping=True,
                    split_special_tokens=message)
            enc.update({id(p): (ids, offs) for p, ids, offs in zip(mine, e["input_ids"], e["offset_mapping"])})
    out = [([], []) for _ in rendered]
    for p in pieces:
        ids, offs = enc[id(p)]
        out[p[0]][0].extend(ids)
        out[p[0]][1].extend((a + p[1], b + p[1]) for a, b in offs)
    return out


def token_layout(r: Rendered, offsets) -> tuple[np.ndarray, np.ndarray]:
    """Region of each token (by its first char) and its turn index (-1 = not a target)."""
    first = np.asarray([o[0] for o in offsets], dtype=np.int64)
    region = np.minimum(np.searchsorted(r.region_end, first, side="right"), len(r.region_end) - 1)
    target = (r.turn[region] >= 0) & (first >= r.content_start[region]) & (first < r.target_end[region])
    return region, np.where(target, r.turn[region], -1)


def windows(region: np.ndarray, turn_index: np.ndarray, max_length: int):
    """Cut one sequence into windows of <= max_length tokens. Each window = the persona region +
    recent history (up to half the budget) + as many whole lines as fit after its first target
    turn; every turn is a target in exactly one window. Yields (token indices, position in them
    where targets may start (earlier turns are context there), history tokens dropped, history
    tokens before the window, tokens cut off because one line exceeds the budget)."""
    if len(region) <= max_length:
        yield np.arange(len(region)), 0, 0, 0, 0
        return
    n_regions = int(region.max()) + 1
    bounds = np.searchsorted(region, np.arange(n_regions + 1))  # regions are contiguous runs
    sizes = np.diff(bounds)
    budget = max_length - sizes[0]
    if budget <= 0:
        raise DataError(f"persona takes {sizes[0]} tokens, more than max_length={max_length}")
    has_target = np.zeros(n_regions, dtype=bool)
    has_target[region[turn_index >= 0]] = True
    turn_regions = np.flatnonzero(has_target)
    k = 0
    while k < len(turn_regions):
        first = int(turn_regions[k])
        hist, used = first, 0
        while hist > 1 and used + sizes[hist - 1] <= budget // 2:
            hist -= 1
            used += sizes[hist]
        if used + sizes[first] > budget:  # a long turn: give its room back from the history
            hist, used = first, 0
        last, used = first, used + sizes[first]
        while last + 1 < n_regions and used + sizes[last + 1] <= budget:
            last += 1
            used += sizes[last]
        k = int(np.searchsorted(turn_regions, last, side="right"))
        idx = np.concatenate([np.arange(bounds[0], bounds[1]), np.arange(bounds[hist], bounds[last + 1])])
        yield (idx[:max_length], int(sizes[0] + bounds[first] - bounds[hist]), int(sizes[1:hist].sum()),
               int(sizes[1:first].sum()), max(len(idx) - max_length, 0))


def assign_splits(groups: list[int], ratios: dict[str, float], folds: int, seed: int):
    """Seeded shuffle of persona groups, filled into splits by dialogue count; folds likewise."""
    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    size = {g: 0 for g in order}
    for g in groups:
        size[g] += 1
    names, total = list(ratios), sum(size.values())
    cum = np.cumsum([ratios[n] for n in names]) / sum(ratios.values()) * total
    split_of, fold_of, seen = {}, {}, 0
    for i, g in enumerate(order):
        split_of[g] = names[min(int(np.searchsorted(cum, seen + size[g] / 2)), len(names) - 1)]
        fold_of[g] = i % folds
        seen += size[g]
    return [split_of[g] for g in groups], [fold_of[g] for g in groups]


def build_rows(dialogues: list[Dialogue], tok, policies: list[str], segments: dict, max_length: int,
               ratios: dict[str, float], folds: int, seed: int, gamma: float = 1.0):
    """All sequences (dicts ready for Parquet) and the stats of the build. gamma discounts inside
    each credited subset (returns.gamma), exactly as ppg.returns.partial_returns does."""
    dialogues = [d for d in dialogues if d.evaluated_speakers]
    batch = turn_batch(dialogues, segments)
    weights = {pid: w.float() for pid, w in
               policy_weights(batch.rewards.double(), batch.mask, batch.segment_starts, policies, gamma).items()}
    groups = persona_groups(dialogues)
    split, fold = assign_splits(groups, ratios, folds, seed)
    where = {d.dialogue_id: (d, groups[i], split[i], fold[i]) for i, d in enumerate(dialogues)}
    eot = end_of_turn_marker(tok)
    rendered = [render(where[did][0], s, tok, eot) for did, s in batch.keys]
    encoded = encode(rendered, tok)
    rows, windowed, hist_dropped, hist_total, cut_tokens = [], 0, 0, 0, 0
    for b, ((did, s), r) in enumerate(zip(batch.keys, rendered)):
        d, group, sp, fo = where[did]
        ids = np.asarray(encoded[b][0], dtype=np.int32)
        region, turn_index = token_layout(r, encoded[b][1])
        n = int(batch.mask[b].sum())
        if n == 0:  # the schema refuses it; never let a sequence without turns reach training
            raise DataError(f"dialogue {did!r} (speaker {s!r}): field lines: the evaluated speaker has no turn")
        placed = np.zeros(n, dtype=bool)
        placed[turn_index[turn_index >= 0]] = True
        if not placed.all():
            t = int(np.flatnonzero(~placed)[0])
            line = [i for i, ln in enumerate(d.lines) if ln.speaker == s][t]
            raise DataError(f"dialogue {did!r} (speaker {s!r}): field lines.{line}.text: turn {t} has no "
                            f"target token (its text {d.lines[line].text!r} could not be placed in the "
                            f"tokenized chat template)")
        try:
            cuts = list(windows(region, turn_index, max_length))
        except DataError as e:
            raise DataError(f"dialogue {did!r} (speaker {s!r}): field personas.{s}: {e}") from None
        windowed += len(cuts) > 1
        for w, (idx, targets_from, dropped, history, cut) in enumerate(cuts):
            hist_dropped, hist_total, cut_tokens = hist_dropped + dropped, hist_total + history, cut_tokens + cut
            window_turns = turn_index[idx]
            window_turns[:targets_from] = -1  # turns repeated as history are context, not targets
            row = {"sequence_id": json.dumps([did, s, w]), "dialogue_id": did, "speaker": s, "domain": d.domain,
                   "source": d.source, "persona_group": group, "split": sp, "fold": fo, "window": w,
                   "n_windows": len(cuts), "n_turns": n, "input_ids": ids[idx], "turn_index": window_turns,
                   "reward": batch.rewards[b, :n].numpy(), "turn_kind": batch.kind_names[b]}
            for pid, wt in weights.items():
                row[f"w_{pid}"] = wt[b, :n].numpy()
            rows.append(row)
    return rows, {"windowed_sequences": windowed, "history_tokens_dropped": hist_dropped,
                  "history_tokens_before_windows": hist_total, "tokens_cut_from_overlong_lines": cut_tokens,
                  "weights": {pid: w[batch.mask] for pid, w in weights.items()},
                  "rewards": batch.rewards[batch.mask]}


def weight_stats(w: torch.Tensor) -> dict:
    known = w[~torch.isnan(w)]
    out = {"turns": int(w.numel()), "nan": int(torch.isnan(w).sum())}
    if known.numel():
        out.update(mean=float(known.mean()), std=float(known.std(unbiased=False)),
                   min=float(known.min()), max=float(known.max()))
    return out


def build_dataset(src, out, model_dir, model_spec: str, policies: list[str], segments: dict, cfg,
                  gamma: float = 1.0) -> dict:
    """Read src (folder with dialogues.jsonl, or a .jsonl), write out/{split}.parquet + stats.json."""
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ppg.data.schema import read_dialogues
    from ppg.io import atomic_open
    from ppg.models import load_tokenizer, tokenizer_hash

    src, out = Path(src), Path(out)
    dialogues = read_dialogues(src / "dialogues.jsonl" if src.is_dir() else src)
    tok = load_tokenizer(model_dir)
    rows, info = build_rows(dialogues, tok, policies, segments, cfg.max_length, cfg.splits, cfg.folds, cfg.seed,
                            gamma)
    tok_hash = tokenizer_hash(model_dir)
    meta = {"ppg.tokenizer_hash": tok_hash, "ppg.model_spec": model_spec, "ppg.policies": ",".join(policies),
            "ppg.gamma": repr(float(gamma))}
    stats = {"model_spec": model_spec, "tokenizer_hash": tok_hash, "max_length": cfg.max_length,
             "policies": policies, "segments": segments, "gamma": gamma, "splits": {}}
    for name in cfg.splits:
        part = [r for r in rows if r["split"] == name]
        table = pa.Table.from_pylist(part, schema=_schema(policies)).replace_schema_metadata(meta)
        with atomic_open(out / f"{name}.parquet", "wb") as f:
            pq.write_table(table, f)
        stats["splits"][name] = {
            "sequences": len(part), "dialogues": len({r["dialogue_id"] for r in part}),
            "persona_groups": len({r["persona_group"] for r in part}),
            "tokens": int(sum(len(r["input_ids"]) for r in part)),
            "target_tokens": int(sum((r["turn_index"] >= 0).sum() for r in part))}
    seqs = {(r["dialogue_id"], r["speaker"]) for r in rows}
    stats.update(
        sequences=len(seqs), windows=len(rows), windowed_share=info["windowed_sequences"] / max(len(seqs), 1),
        history_dropped_share=info["history_tokens_dropped"] / max(info["history_tokens_before_windows"], 1),
        tokens_cut_from_overlong_lines=info["tokens_cut_from_overlong_lines"],
        rewards=weight_stats(info["rewards"]),
        weights={pid: weight_stats(w) for pid, w in info["weights"].items()})
    with atomic_open(out / "stats.json") as f:
        json.dump(stats, f, indent=1)
    return stats


def _schema(policies):
    import pyarrow as pa

    fields = [("sequence_id", pa.string()), ("dialogue_id", pa.string()), ("speaker", pa.string()),
              ("domain", pa.string()), ("source", pa.string()), ("persona_group", pa.int64()),
              ("split", pa.string()), ("fold", pa.int64()), ("window", pa.int64()), ("n_windows", pa.int64()),
              ("n_turns", pa.int64()), ("input_ids", pa.list_(pa.int32())), ("turn_index", pa.list_(pa.int32())),
              ("reward", pa.list_(pa.float32())), ("turn_kind", pa.list_(pa.string()))]
    return pa.schema(fields + [(f"w_{p}", pa.list_(pa.float32())) for p in policies])


def check_tokenizer(parquet_path, model_dir) -> None:
    """Refuse a dataset tokenized for another tokenizer (the trainer calls this before it loads
    any sequence: token ids of another vocabulary would train silently on garbage)."""
    import pyarrow.parquet as pq

    from ppg.models import tokenizer_hash

    meta = pq.read_schema(parquet_path).metadata or {}
    built = meta.get(b"ppg.tokenizer_hash", b"").decode()
    have = tokenizer_hash(model_dir)
    if built != have:
        raise DataError(f"{parquet_path}: field tokenizer_hash: built for tokenizer {built or '(none)'} "
                        f"({meta.get(b'ppg.model_spec', b'?').decode()}), but {model_dir} has {have}: rebuild")
