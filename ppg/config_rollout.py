"""params.yaml's settings of how rollouts are played: the sampling of a generation section
(eval.generation, online.generation) and the llm partner behind an endpoint
(eval.partner_endpoint). (Part of the one config tree of ppg.config; split out for length.)"""

from dataclasses import dataclass


BACKEND_NAMES = ("cache", "generate")
"""The repliers of ppg.generation.BACKENDS, by name (here, so params load without torch)."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    """Longest reply, in tokens."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.9
    """Nucleus sampling: sample among the most likely tokens whose probabilities sum to top_p."""
    batch_size: int = 8
    """Rows sampled together: dialogues in a rollout; in the Q&A after it, questions (those of
    batch_size // questions-per-dialogue dialogues, which share their dialogue's encoding). On a
    CPU a larger batch costs little more per step than a small one."""
    backend: str = "cache"
    """cache: keep each batch's KV cache across turns (a turn prefills only its new ids);
    generate: transformers' generate over the re-encoded dialogue every turn (slower; for a model
    whose cache cannot be extended with masked gaps)."""


def generation_config(key: str, d) -> GenerationConfig:
    """The GenerationConfig of a params mapping (eval.generation, online.generation); an unknown
    key or backend is an error that names the key."""
    from dataclasses import fields

    names = [f.name for f in fields(GenerationConfig)]
    if not isinstance(d, dict) or set(d) - set(names):
        raise ValueError(f"{key}: expected a mapping with keys among {', '.join(names)}, got {d!r}")
    gen = GenerationConfig(**d)
    if gen.backend not in BACKEND_NAMES:
        raise ValueError(f"{key}.backend: expected {' or '.join(BACKEND_NAMES)}, got {gen.backend!r}")
    if gen.max_new_tokens < 1 or gen.batch_size < 1 or gen.temperature < 0 or not 0 < gen.top_p <= 1:
        raise ValueError(f"{key}: max_new_tokens and batch_size must be >= 1, temperature >= 0, "
                         f"top_p in (0, 1]; got {d!r}")
    return gen


@dataclass
class PartnerEndpointConfig:
    """The llm partner behind an OpenAI-compatible chat-completions endpoint (a vLLM or TGI
    server, `transformers serve`, a hosted API) instead of a model loaded beside the policy.
    Requests, retries and redirects follow the judge's rules (ppg.judges.endpoint); its replies
    are sampled with the rollout's generation settings and never cached."""
    base_url: str = ""
    """The endpoint's base URL (…/v1); "" = the partner is eval.partner_model, in this process."""
    model: str = ""
    """The model name sent with each request (and recorded as the partner's identity)."""
    api_key_env: str = ""
    """The environment variable that holds the API key ("" = none sent; never written anywhere)."""
    timeout_s: float = 60.0
    """The whole of one attempt in seconds (connecting, sending, the answer's last byte)."""
    retries: int = 3
    """Retries of a request that timed out, got HTTP 429/5xx or an answer that is not a chat
    completion; a dialogue whose request still fails is dropped and counted (never shortened). A
    redirect or another 4xx stops the run at once: retrying will not mend a wrong name or key."""
    backoff_s: float = 0.5
    """The first retry's wait; each next one doubles it."""
    retry_after_max_s: float = 60.0
    """The longest wait a 429's Retry-After header is honoured for."""
    concurrency: int = 8
    """Requests in flight at once (one per dialogue of a generation batch)."""
    max_drop_share: float = 0.25
    """More dropped dialogues than this share of those played fails the run: the endpoint is down
    rather than flaky, and the survivors would be a biased sample."""

    def __post_init__(self):
        if self.base_url and not self.model:
            raise ValueError("eval.partner_endpoint.model: the endpoint's model name is required with base_url")
        if self.retries < 0 or self.concurrency < 1 or not 0 <= self.max_drop_share < 1:
            raise ValueError("eval.partner_endpoint: retries must be >= 0, concurrency >= 1, "
                             "max_drop_share in [0, 1)")
        if not (self.timeout_s > 0 and self.backoff_s >= 0 and self.retry_after_max_s >= 0):
            raise ValueError("eval.partner_endpoint: timeout_s must be > 0, backoff_s and retry_after_max_s >= 0")
