"""The check every trainer's output must pass: reloaded the way evaluation loads it and the way
`ppg export` merges it for the registry, it gives the logits the model had at the end of training."""

from pathlib import Path

IDS = [[5, 17, 42, 99, 3, 250, 11]]


def final_logits(monkeypatch) -> dict:
    """Catch the logits of the trained model on IDS just before the trainer saves it."""
    import torch

    from ppg.train import engine as eng

    seen, write = {}, eng.write_output

    def spy(engine, *args, **kwargs):
        with torch.no_grad():
            seen["logits"] = engine.module(input_ids=torch.tensor(IDS)).logits
        return write(engine, *args, **kwargs)

    monkeypatch.setattr(eng, "write_output", spy)
    return seen


def assert_reloads_to_the_trained_model(p, name: str, seen: dict, tmp_path):
    """The saved output, loaded as evaluation loads it and as `ppg export` merges it for the
    registry, gives the logits the model had at the end of training."""
    import torch
    from transformers import AutoModelForCausalLM

    from ppg.evaluate.run import load_trained
    from ppg.models import export_merged

    ids = torch.tensor(IDS)
    with torch.no_grad():
        evaluated = load_trained(p, name)[0](input_ids=ids).logits
        merged = export_merged(Path(p.train.out) / name, tmp_path / f"export-{name}")
        exported = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
    assert torch.allclose(evaluated, seen["logits"], atol=1e-5), float((evaluated - seen["logits"]).abs().max())
    assert torch.allclose(exported, seen["logits"], atol=1e-5), float((exported - seen["logits"]).abs().max())
