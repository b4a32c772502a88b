"""The MLflow model registry: register a run's best policy as `challenger`, gate it against the
`champion` on the test split, promote or roll back by hand.

Aliases, not stages (MLflow 3). The registered model is the merged HF model (LoRA folded into
its base) inside a chat model (ppg/chat_model.py, logged as code into the policy's own run), so
`models:/ppg-<domain>@champion` loads and serves OpenAI-style chat anywhere without peft or
this package. The champion's history is a JSON list in the registered model's tag
`ppg.champion_history`, so a rollback knows where to go back to.
"""

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import yaml

from ppg import tracking
from ppg.evaluate.run import measure
from ppg.lineage.record import FOLDER, dvc_md5
from ppg.metrics import metric

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "ppg.champion_history"


def model_name(p, metrics: dict) -> str:
    domain = (metrics.get("online") or {}).get("domain") or (metrics.get("offline") or {}).get("domain") or "data"
    return p.registry.model.format(domain=domain)


def _client(p):
    c = tracking.client(p.mlflow)
    tracking.experiment_id(c, p.mlflow)
    return c


@contextmanager
def fluent(p):
    """MLflow's fluent API (log_model, load_model) on p's store, for this block only:
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which every later subprocess (a
    stage, a test's `ppg train`) would inherit, so both are put back."""
    import mlflow

    before, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    c = _client(p)
    mlflow.set_tracking_uri(c.tracking_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def versions_of_run(c, name: str, run_id: str) -> tuple[str | None, str | None]:
    """(gated, ungated): the newest version of `name` logged from training run run_id whose gate
    gave its verdict (tag ppg.gate), and the newest one registered but never gated (its pipeline
    run died between registration and the verdict: a tracking server that went away, a kill)."""
    from mlflow.exceptions import MlflowException

    try:
        vs = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None, None
        raise
    vs = sorted((v for v in vs if v.status == "READY"), key=lambda v: int(v.version))
    gated = [str(v.version) for v in vs if "ppg.gate" in v.tags]
    ungated = [str(v.version) for v in vs if "ppg.gate" not in v.tags]
    return (gated[-1] if gated else None), (ungated[-1] if ungated else None)


def registration_step(p, c, best: str | None, metrics: dict, runs: dict, trained: dict,
                      against_base: dict | None = None) -> tuple[str, str]:
    """What to do with the best policy on validation, decided by the registry, not by what DVC ran
    now (weights trained by a run that died before its gate's verdict are registered and gated by
    the next one): ("register", the version of its training run registered but never gated, or
    "") or ("none", why nothing is registered, in words). against_base: policy -> its paired
    difference against the untrained base (ppg.gate.paired_difference), which
    registry.require_better_than_base asks to clear 0."""
    from ppg.metrics import metric_spec, unscored

    if best is None:
        if not metrics:
            return "none", (f"returns.policies {list(p.returns.policies)} holds controls only (they use no reward "
                            f"and are never registered), so nothing was registered")
        return "none", (f"no policy has a {p.eval.primary} score on validation ("
                        + "; ".join(f"{pol}: {unscored(m, p.eval.primary)}" for pol, m in metrics.items())
                        + "), so nothing was registered")
    if p.registry.require_better_than_base and metric_spec(p.eval.primary).offline_stat is None:
        d = (against_base or {}).get(best)
        if d is None or d.get("lo") is None:  # unknown is not better
            why = (f"{d['n']} paired personas give no interval" if d else "the untrained base was not measured")
            return "none", (f"the best policy on validation, {best}, is not shown better than the untrained base on "
                            f"{p.eval.primary} ({why}): nothing was registered (registry.require_better_than_base)")
        if d["lo"] <= 0:
            return "none", (f"the best policy on validation, {best}, is not shown better than the untrained base "
                            f"({p.eval.primary}: {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] over {d['n']} "
                            f"personas): nothing was registered (registry.require_better_than_base; more "
                            f"eval.personas narrow the interval, more training moves the policy)")
    gated, ungated = versions_of_run(c, model_name(p, metrics[best]), runs[best])
    if gated is not None:
        when = "this run" if trained.get(best) else "an earlier run"
        return "none", (f"the best policy on validation, {best} (trained in {when}), is registered and gated "
                        f"already as v{gated}: nothing new to register")
    return "register", ungated or ""


def register(p, policy: str, parent_run_id: str | None = None, ungated: str | None = None) -> tuple[str, str]:
    """Merge models/<policy>, log it into the policy's run and register it as a new version of
    its registered model with alias `challenger`; `ungated`, a version of the same training run
    that an earlier pipeline run registered but never gated (versions_of_run's second value: the
    caller has searched the registry already), is completed instead of logged twice. Returns
    (registered name, version)."""

    from ppg.models import export_merged, load_tokenizer
    from ppg.returns import is_control

    if is_control(policy):
        raise ValueError(f"{policy} is a control (it uses no reward): it is compared with, never registered")
    trained = Path(p.train.out) / policy
    run = json.loads((trained / "run.json").read_text())
    metrics = json.loads((Path(p.eval.out) / policy / "metrics.json").read_text())
    name = model_name(p, metrics)
    c = _client(p)
    version = ungated
    if version is None:
        merged = export_merged(trained, Path(p.train.workdir).parent / "register" / policy)
        load_tokenizer(merged).save_pretrained(str(merged))  # with its chat template, which serving applies
        gen = p.eval.generation
        with fluent(p) as mlflow, mlflow.start_run(run_id=run["mlflow_run_id"]):  # explicit: never a shared run
            info = log_chat_model(mlflow, merged, name, gen.get("max_new_tokens", 32), name.removeprefix("ppg-"))
        shutil.rmtree(merged)  # a full copy of the model; the registry holds it now
        version = str(info.registered_model_version)
    # the record of the pipeline run that made it (ppg.lineage.record): what `ppg reproduce` reads
    made = c.get_run(parent_run_id).data.tags if parent_run_id else {}
    tags = {"ppg.policy": policy, "ppg.run_id": run["mlflow_run_id"], "ppg.parent_run_id": parent_run_id or "",
            "ppg.record": f"runs:/{parent_run_id}/{FOLDER}" if parent_run_id else "",
            "ppg.dataset_md5": dvc_md5(p.build.out) or "", "ppg.git_commit": made.get("ppg.git_commit", ""),
            "ppg.code_hash": made.get("ppg.code_hash", ""), "ppg.code_dirty": made.get("ppg.code_dirty", ""),
            "ppg.dvc_remote": made.get("ppg.dvc_remote", ""), "ppg.steps": str(run.get("steps", "")),
            f"ppg.validation.{p.eval.primary}": str(metric(metrics, p.eval.primary))}
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    c.set_registered_model_alias(name, CHALLENGER, version)
    return name, version


def log_chat_model(mlflow, hf: Path, name: str, max_new_tokens: int, domain: str):
    """Log the HF folder as the chat model (ppg/chat_model.py, as code) into the active run and
    register it as a new version of NAME; returns MLflow's ModelInfo."""
    import torch
    import transformers
    from mlflow.models import ModelSignature
    from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA

    with warnings.catch_warnings():
        # the signature is the chat schema, given: MLflow's advice to add type hints instead (and
        # an input example, which would load the model while logging) does not apply
        warnings.filterwarnings("ignore", message=".*(type hints to the `predict`|input example was not)")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("chat_model.py")),
            signature=ModelSignature(CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA),
            metadata={"task": "llm/v1/chat"}, artifacts={"hf": str(hf)}, registered_model_name=name,
            model_config={"max_new_tokens": max_new_tokens, "domain": domain},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"transformers=={transformers.__version__}", f"mlflow=={mlflow.__version__}"])


def load_registered(p, uri: str):
    """(model, tokenizer) of a registered model URI in p's store, e.g. models:/ppg-therapy@champion,
    on the device evaluation uses (ppg.models.eval_device: the GPU when training had one). Reads
    the chat model's HF folder, or a version logged with the transformers flavor (before the chat
    signature)."""
    from transformers import AutoModelForCausalLM

    from ppg.models import eval_device, load_tokenizer

    with fluent(p) as mlflow:
        if "transformers" in mlflow.models.get_model_info(uri).flavors:
            parts = mlflow.transformers.load_model(uri, return_type="components")
            model, tok = parts["model"], parts["tokenizer"]
        else:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
                mlmodel = yaml.safe_load((root / "MLmodel").read_text())
                hf = root / mlmodel["flavors"]["python_function"]["artifacts"]["hf"]["path"]
                model, tok = AutoModelForCausalLM.from_pretrained(str(hf)), load_tokenizer(hf)
    model = model.to(eval_device()).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def served_settings(p, uri: str) -> tuple[int, str]:
    """(max_new_tokens, domain) logged with a registered chat model (its model_config)."""
    with fluent(p) as mlflow:
        flavor = mlflow.models.get_model_info(uri).flavors.get("python_function", {})
    config = flavor.get("config") or {}
    return int(config.get("max_new_tokens", 64)), str(config.get("domain", ""))


def alias_version(c, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_history(c, name) -> list[str]:
    """The champion history, repaired: promote writes the alias first and the history tag second,
    so a crash between them leaves a champion the tag does not end with; it is appended here."""
    hist = json.loads(c.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
    current = alias_version(c, name, CHAMPION)
    if current is not None and (not hist or hist[-1] != current):
        hist = [v for v in hist if v != current] + [current]
    return hist


def promote(p, name: str, version: str, reason: str = "by hand") -> None:
    """Make `version` the champion; the previous champion is remembered for rollback."""
    c = _client(p)
    c.get_model_version(name, version)  # raises if there is no such version
    hist = [v for v in champion_history(c, name) if v != str(version)] + [str(version)]
    c.set_registered_model_alias(name, CHAMPION, str(version))
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(hist))
    c.set_model_version_tag(name, str(version), "ppg.promoted", reason)


def rollback(p, name: str) -> str:
    """Give `champion` back to the version that held it before the current one."""
    c = _client(p)
    hist = champion_history(c, name)
    current = alias_version(c, name, CHAMPION)
    if current is None or len(hist) < 2:
        raise ValueError(f"registry: {name} has no earlier champion to roll back to (history {hist}, "
                         f"champion {current})")
    c.set_registered_model_alias(name, CHAMPION, hist[-2])
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(hist[:-1]))
    c.set_model_version_tag(name, current, "ppg.rolled_back", "true")
    return hist[-2]


@contextmanager
def gate_mutex(p, name: str, say=print):
    """One registry change at a time per registered model, seen by every workspace that shares
    the registry. MLflow has no compare-and-set on aliases, so with a Prefect server
    (PREFECT_API_URL) this is its global concurrency limit `ppg-gate-<model>` (limit 1); on the
    embedded engine the registry is the workspace's own and the workspace lock, which the
    caller holds, is the mutex. Yields what serializes the change, for the record."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        uri = tracking.client(p.mlflow).tracking_uri
        if not uri.startswith(("sqlite:", "file:")) and "://" in uri:
            say(f"warning: the registry at {uri} may be shared, but without a Prefect server "
                f"(PREFECT_API_URL) only this workspace's lock serializes changes to {name}")
        yield "workspace lock"
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    limit = f"ppg-gate-{name}"
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(limit, 1)
        except ObjectAlreadyExists:  # Prefect's upsert is read-then-create: another gate created it first
            client.upsert_global_concurrency_limit_by_name(limit, 1)
    say(f"waiting for the Prefect concurrency limit {limit} (one registry change per model at a time)")
    try:
        slot = concurrency(limit, occupy=1, timeout_seconds=p.pipeline.lock_timeout, strict=True)
        slot.__enter__()
    except TimeoutError:
        raise TimeoutError(f"registry: {name}: another workspace held the Prefect concurrency limit {limit} "
                           f"for more than pipeline.lock_timeout = {p.pipeline.lock_timeout:g} s; nothing was "
                           f"changed") from None
    try:
        yield f"Prefect concurrency limit {limit}"
    finally:
        slot.__exit__(None, None, None)


def gate_seed(p) -> int:
    """registry.seed, or a fresh draw that is never the validation personas' seed."""
    import secrets

    if p.registry.seed is not None:
        return p.registry.seed
    while (s := 10 ** 6 + secrets.randbelow(2 ** 31 - 10 ** 6)) == p.eval.seed:
        pass
    return s


def gate(p, name: str, version: str, policy: str, parent_run_id: str | None = None, say=print) -> dict:
    """Promote `version` to champion if it passes registry.thresholds and, against the current
    champion measured on the SAME freshly drawn test personas (or test rows offline), the paired
    lower bound of its improvement on eval.primary is above registry.margin (ppg.gate.decide).
    Serialized per model (gate_mutex); the champion is read inside the mutex and again just
    before the write: if it moved meanwhile, nothing is promoted."""
    from ppg.gate import decide
    from ppg.models import base_model, eval_device

    c = _client(p)
    seed = gate_seed(p)
    pt = replace(p, eval=replace(p.eval, split="test", personas=p.registry.personas or p.eval.personas))
    ref, ref_cache = None, {}  # both models are scored against one reference on the same rows: once
    if p.eval.mode in ("offline", "both"):
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(str(base_model(p))).to(eval_device()).eval()

    vocab = {}

    def test_metrics(v):
        model, tok = load_registered(p, f"models:/{name}/{v}")
        vocab[v] = tok.get_vocab()
        m, _, turns = measure(pt, model, tok, "test", policy, ref=ref, seed=seed, ref_cache=ref_cache)
        return m, turns

    with gate_mutex(p, name, say) as mutex:
        champ_v = alias_version(c, name, CHAMPION)
        chal, chal_turns = test_metrics(version)
        champ, champ_turns = test_metrics(champ_v) if champ_v and champ_v != version else (None, None)
        d = decide(p.eval.primary, chal, champ, chal_turns, champ_turns, p.registry, seed)
        if champ is not None and ref is not None and vocab[version] != vocab[champ_v]:
            # the offline test split is token ids of this base model's tokenizer
            d = {**d, "promoted": False, "reason": f"champion v{champ_v} has another tokenizer than v{version}: "
                                                   f"the offline comparison would score foreign token ids "
                                                   f"(evaluate online, or promote by hand)"}
        now = alias_version(c, name, CHAMPION)
        if now != champ_v:
            d = {**d, "promoted": False, "reason": f"the champion moved during the gate (v{champ_v} -> v{now}); "
                                                   f"not promoted: rerun the gate to compare against v{now}"}
        if d["promoted"]:
            promote(p, name, version, d["reason"])
    primary = p.eval.primary
    x, y = metric(chal, primary), metric(champ, primary) if champ else None
    decision = {"model": name, "challenger": version, "champion_before": champ_v,
                "champion": version if d["promoted"] else now, "promoted": d["promoted"], "reason": d["reason"],
                "primary": primary, "challenger_test": x, "champion_test": y, "difference": d["difference"],
                "non_inferiority": d["secondary"], "test_seed": seed if p.eval.mode != "offline" else None,
                "test_personas": pt.eval.personas if p.eval.mode != "offline" else None, "serialized_by": mutex,
                "thresholds": p.registry.thresholds, "margin": p.registry.margin,
                "confidence": p.registry.confidence, "min_pairs": p.registry.min_pairs,
                # dialogues the partner dropped: the pairs are the personas both models completed
                "partner_drops": {"challenger": (chal.get("online") or {}).get("partner_drops"),
                                  "champion": ((champ or {}).get("online") or {}).get("partner_drops")}}
    verdict = ("promoted: " if d["promoted"] else "blocked: ") + d["reason"]
    c.set_model_version_tag(name, version, "ppg.gate", verdict)
    if parent_run_id:
        c.log_dict(parent_run_id, {"decision": decision, "challenger": chal, "champion": champ}, "gate.json")
        for k, v in (("gate.challenger_test", x), ("gate.champion_test", y),
                     ("gate.difference", (d["difference"] or {}).get("mean")),
                     ("gate.difference.lo", (d["difference"] or {}).get("lo"))):
            if v is not None:
                c.log_metric(parent_run_id, k, v)
        c.set_tag(parent_run_id, "ppg.gate",
                  ("promoted v" if d["promoted"] else "blocked v") + f"{version}: {d['reason']}")
    say(("PROMOTED " if d["promoted"] else "NOT PROMOTED ") + f"{name} v{version}: {d['reason']}")
    return decision


def register_judge(p, folder: Path, run_id: str, name: str = "ppg-judge") -> dict:
    """A `ppg train-judge` output as a version of its own registered model, tagged with its
    held-out AUC and its training run."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    from ppg.models import load_tokenizer

    model, tok = AutoModelForSequenceClassification.from_pretrained(str(folder)), load_tokenizer(folder)
    with fluent(p) as mlflow, mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="judge",
                                             task="text-classification", registered_model_name=name,
                                             pip_requirements=[f"transformers=={transformers.__version__}"])
    version = str(info.registered_model_version)
    c = tracking.client(p.mlflow)
    auc = json.loads((Path(folder) / "judge.json").read_text())["validation"]["auc"].get("mean")
    c.set_model_version_tag(name, version, "ppg.validation_auc", str(auc))
    c.set_model_version_tag(name, version, "ppg.run_id", run_id)
    return {"model": name, "version": version}
