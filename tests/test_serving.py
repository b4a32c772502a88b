"""The registered chat model (ppg/chat_model.py) called directly, as `mlflow models serve` calls
it; old (ChatModel) and new registrations both load and answer /invocations; and the
per-workspace deployment names. The served end to end: tests/services."""

import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ppg.config_ops import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def test_deployment_names_differ_per_workspace_and_repeat_for_one(tmp_path):
    cfg = PipelineConfig()
    a, b = tmp_path / "one" / "repo", tmp_path / "two" / "repo"  # same folder name, other paths
    a.mkdir(parents=True), b.mkdir(parents=True)
    assert cfg.deployment_name(a) == cfg.deployment_name(a) != cfg.deployment_name(b)
    assert cfg.deployment_name(a).startswith("scheduled-") and "-repo-" in cfg.deployment_name(a)
    assert PipelineConfig(deployment="nightly").deployment_name(a) == "nightly"


@pytest.fixture(scope="module")
def chat(tiny_model):
    spec = importlib.util.spec_from_file_location("chat_model_under_test", ROOT / "ppg" / "chat_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.PersonaChat()
    model.load_context(SimpleNamespace(artifacts={"hf": str(tiny_model)},
                                       model_config={"max_new_tokens": 6, "domain": "therapy"}))
    return mod, model


def ask(mod, model, **params):
    """The chat model's answer to a request as /invocations passes it, read as attributes."""
    msgs = [{"role": "system", "content": "I am Maya, 34, a nurse in Leeds."},
            {"role": "user", "content": "Where do you work?"}]
    out = model.predict(None, {"messages": msgs, **params})
    return json.loads(json.dumps(out), object_hook=lambda d: SimpleNamespace(**d))


def test_max_tokens_and_the_default_budget_are_honoured(chat):
    mod, model = chat
    short = ask(mod, model, max_tokens=2, temperature=0.0)
    assert short.usage.completion_tokens <= 2
    default = ask(mod, model, temperature=0.0)
    assert default.usage.completion_tokens <= 6  # model_config's max_new_tokens
    # the tiny random model rarely ends by itself: a full budget is reported as "length"
    if short.usage.completion_tokens == 2:
        assert short.choices[0].finish_reason == "length"


def test_temperature_zero_is_greedy_and_a_high_temperature_samples(chat):
    mod, model = chat
    tok = model.tok
    msgs = [{"role": "system", "content": "I am Maya, 34, a nurse in Leeds."},
            {"role": "user", "content": "Where do you work?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        ref = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                   pad_token_id=tok.pad_token_id or tok.eos_token_id)
    greedy = ask(mod, model, temperature=0.0).choices[0].message.content
    assert greedy == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).strip()
    torch.manual_seed(0)
    sampled = {ask(mod, model, temperature=5.0, max_tokens=6).choices[0].message.content for _ in range(4)}
    assert len(sampled) > 1  # near-uniform over the tiny vocabulary: four draws that agree would be a fluke


def test_each_answered_request_is_logged_as_a_canonical_dialogue(chat, tmp_path, monkeypatch):
    from ppg.data.schema import read_dialogues

    mod, model = chat
    monkeypatch.setenv("PPG_REQUEST_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("PPG_MODEL_VERSION", "ppg-therapy/7")
    first, second = ask(mod, model, temperature=0.0), ask(mod, model, temperature=0.0)
    assert first.model == "ppg-therapy/7"
    paths = sorted((tmp_path / "log").glob("requests-*.jsonl"))  # one file per UTC day (two across midnight)
    ds = [d for path in paths for d in read_dialogues(path)]  # the schema the monitor reads
    assert [d.dialogue_id for d in ds] == [f"served-{r.id.removeprefix('chatcmpl-')}" for r in (first, second)]
    raw = [json.loads(x) for path in paths for x in path.read_text().splitlines()]
    for path in paths:  # each record in the file of its own day
        for x in path.read_text().splitlines():
            assert path.name == time.strftime("requests-%Y-%m-%d.jsonl", time.gmtime(json.loads(x)["meta"]["time"]))
    assert raw[0]["personas"] == {"assistant": "I am Maya, 34, a nurse in Leeds."}
    assert [x["speaker"] for x in raw[0]["lines"]] == ["user", "assistant"]
    assert raw[0]["lines"][1]["text"] == first.choices[0].message.content and raw[0]["lines"][1]["reward"] is None
    assert raw[0]["meta"]["model_version"] == "ppg-therapy/7" and raw[0]["meta"]["conversation"] == raw[1]["meta"][
        "conversation"]


def test_old_and_new_registrations_load_and_answer_the_same_invocations(tiny_model, tmp_path):
    """Champions registered before (MLflow's deprecated ChatModel, tests/fixtures/chat_model_v1.py
    as it was logged) and after (a PythonModel with the chat signature): load_registered reads
    both; the new one answers {"messages": ...} at /invocations as the old one did, greedy alike;
    logging it raises no FutureWarning."""
    import warnings

    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from ppg.config import MlflowConfig, Params
    from ppg.tracking import client, experiment_id
    from ppg.registry import fluent, load_registered, log_chat_model, served_settings

    p = Params(mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "a")))
    with fluent(p), mlflow.start_run(experiment_id=experiment_id(client(p.mlflow), p.mlflow)):
        mlflow.pyfunc.log_model(name="model", python_model=str(ROOT / "tests/fixtures/chat_model_v1.py"),
                                artifacts={"hf": str(tiny_model)}, registered_model_name="ppg-therapy",
                                model_config={"max_new_tokens": 5, "domain": "therapy"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            log_chat_model(mlflow, tiny_model, "ppg-therapy", 5, "therapy")
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    body = {"messages": [{"role": "system", "content": "I am Maya."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 3, "temperature": 0.0}
    answers = {}
    first = load_registered(p, "models:/ppg-therapy/1")[0].state_dict()
    for v in ("1", "2"):
        uri = f"models:/ppg-therapy/{v}"
        model, tok = load_registered(p, uri)
        assert served_settings(p, uri) == (5, "therapy") and tok.pad_token is not None
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), first.values()))
        with fluent(p):
            r = TestClient(scoring_server.init(mlflow.pyfunc.load_model(uri))).post("/invocations", json=body)
        assert r.status_code == 200, r.text
        answers[v] = r.json()
    old, new = answers["1"], answers["2"]
    assert old["choices"][0]["message"] == new["choices"][0]["message"]
    assert old["usage"] == new["usage"] and new["usage"]["completion_tokens"] <= 3
