import math

import pytest
import torch

from ppg.losses import offline_ppg_loss, online_ppg_loss, token_logprobs, turn_logprobs

NAN = float("nan")


def test_offline_loss_on_a_hand_computed_case():
    # one sequence: tokens 1-2 are turn 0, token 4 is turn 1, token 5 is turn 2
    logp = torch.tensor([[0.0, -1.0, -2.0, -9.0, -0.5, -4.0]], requires_grad=True)
    idx = torch.tensor([[-1, 0, 0, -1, 1, 2]])
    w = torch.tensor([[2.0, 1.0, NAN]])
    out = offline_ppg_loss(logp, idx, w)
    # turn sums: -3, -0.5; turn 2 excluded (NaN weight) -> -(2*-3 + 1*-0.5) / 2 turns
    assert out.loss.item() == pytest.approx(3.25)
    assert (out.turns, out.excluded) == (2, 1)
    out.loss.backward()
    assert torch.equal(logp.grad, torch.tensor([[0.0, -1.0, -1.0, 0.0, -0.5, 0.0]]))
    mean = offline_ppg_loss(logp, idx, w, reduction="mean", denominator=4.0)
    assert mean.loss.item() == pytest.approx(-(2 * -1.5 + 1 * -0.5) / 4)


def test_turns_absent_from_the_sequence_are_neither_trained_nor_counted():
    logp = torch.tensor([[0.0, -1.0, -1.0]])
    out = offline_ppg_loss(logp, torch.tensor([[-1, 0, 0]]), torch.tensor([[1.0, NAN, 5.0]]))
    assert (out.turns, out.excluded) == (1, 0)
    assert out.loss.item() == pytest.approx(2.0)


class ToyLM(torch.nn.Module):
    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, ids):  # causal: position i sees a running mean of tokens <= i
        h = self.emb(ids).cumsum(1) / torch.arange(1, ids.shape[1] + 1)[None, :, None]
        return self.out(torch.tanh(self.mix(h)))


def test_offline_gradient_is_weighted_sum_of_turn_score_functions():
    torch.manual_seed(0)
    model = ToyLM()
    ids = torch.randint(0, 11, (2, 9))
    idx = torch.tensor([[-1, -1, 0, 0, -1, 1, 1, 1, -1], [-1, 0, -1, 1, 1, -1, 2, -1, -1]])
    w = torch.tensor([[0.7, -1.3, 0.0], [2.0, NAN, 0.4]])
    out = offline_ppg_loss(token_logprobs(model(ids), ids), idx, w)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    # reference: sum_t w_t * grad log pi(a_t | x_t), each turn's log-prob taken separately
    ref = [torch.zeros_like(p) for p in model.parameters()]
    for b in range(2):
        for t in range(3):
            if math.isnan(w[b, t]) or not (idx[b] == t).any():
                continue
            lp = torch.log_softmax(model(ids[b:b + 1]), -1)[0]
            pos = (idx[b] == t).nonzero().squeeze(1)
            turn_lp = lp[pos - 1, ids[b, pos]].sum()
            for acc, g in zip(ref, torch.autograd.grad(turn_lp, list(model.parameters()))):
                acc += w[b, t] * g
    assert (out.turns, out.excluded) == (4, 1)
    for g, r in zip(grads, ref):
        assert torch.allclose(g, -r / 4, atol=1e-6)
        assert torch.isfinite(g).all()


def test_non_target_tokens_get_no_gradient():
    torch.manual_seed(1)
    logits = torch.randn(1, 6, 5, requires_grad=True)
    ids = torch.randint(0, 5, (1, 6))
    idx = torch.tensor([[-1, -1, 0, -1, 1, -1]])
    out = offline_ppg_loss(token_logprobs(logits, ids), idx, torch.tensor([[1.0, NAN]]))
    out.loss.backward()
    # only logits at position 1 predict a weighted target (token 2, turn 0); turn 1 is NaN
    nonzero = (logits.grad.abs().sum(-1) > 0)[0].tolist()
    assert nonzero == [False, True, False, False, False, False]


def test_turn_mean_divides_by_the_turns_token_count():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -6.0]])
    sums, present = turn_logprobs(logp, torch.tensor([[0, 0, 0, 2]]), 3, "mean")
    assert sums.tolist() == [[-2.0, 0.0, -6.0]] and present.tolist() == [[True, False, True]]


def test_online_loss_k1_k2_and_k3_on_hand_computed_tokens():
    logp = torch.tensor([[0.0, math.log(0.5), math.log(0.25)]], requires_grad=True)
    ref = torch.tensor([[0.0, math.log(0.25), math.log(0.25)]])
    idx = torch.tensor([[-1, 0, 1]])
    adv = torch.tensor([[1.0, NAN]])
    # token 1: d = log(.25/.5) = -log 2 -> k3 = 0.5 + log 2 - 1; token 2: d = 0 -> 0; the logged
    # KL is k3's value whatever the estimator
    kl = (0.5 + math.log(2) - 1) / 2
    k3 = online_ppg_loss(logp, ref, idx, adv, kl_coef=0.5, kl_estimator="k3")
    assert k3.kl.item() == pytest.approx(kl)
    assert k3.loss.item() == pytest.approx(-math.log(0.5) + 0.5 * kl)
    assert (k3.turns, k3.excluded) == (1, 1)
    k2 = online_ppg_loss(logp, ref, idx, adv, kl_coef=0.5, kl_estimator="k2")
    assert k2.kl.item() == pytest.approx(kl)
    assert k2.loss.item() == pytest.approx(-math.log(0.5) + 0.5 * (0.5 * math.log(2) ** 2) / 2)
    for est in ("k1", "k2"):  # the same gradient: PG -1 on token 1; KL 0.5 * (log pi - log ref) / 2 tokens
        logp.grad = None
        online_ppg_loss(logp, ref, idx, adv, kl_coef=0.5, kl_estimator=est).loss.backward()
        assert logp.grad[0].tolist() == pytest.approx([0.0, -1.0 + 0.5 * math.log(2) / 2, 0.0]), est


@pytest.mark.parametrize("estimator,target", [("k1", "forward"), ("k2", "forward"), ("k3", "reverse")])
def test_each_kl_estimator_follows_the_gradient_its_docstring_names(estimator, target):
    """One categorical step, every token weighed by its probability (the exact expectation over a
    sample): k1 and k2 give grad KL(pi || ref); k3, differentiated directly, grad KL(ref || pi)."""
    from ppg.losses import kl_penalty

    torch.manual_seed(2)
    theta = torch.randn(7, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(7, dtype=torch.float64), -1)
    logp = torch.log_softmax(theta, -1)
    p, q = logp.exp(), ref.exp()
    kl = (p * (logp - ref)).sum() if target == "forward" else (q * (ref - logp)).sum()
    exact = torch.autograd.grad(kl, theta, retain_graph=True)[0]
    penalty, _ = kl_penalty(logp, ref, estimator)
    expected = torch.autograd.grad((p.detach() * penalty).sum(), theta, retain_graph=True)[0]
    assert torch.allclose(expected, exact, atol=1e-12)
    other = (q * (ref - logp)).sum() if target == "forward" else (p * (logp - ref)).sum()
    assert not torch.allclose(expected, torch.autograd.grad(other, theta)[0], atol=1e-3)  # the two differ here


@pytest.mark.parametrize("call,argument", [
    (lambda lp, i: offline_ppg_loss(lp, i, torch.ones(3)), "weights"),
    (lambda lp, i: offline_ppg_loss(lp, i[:, :2], torch.ones(1, 2)), "turn_index"),
    (lambda lp, i: offline_ppg_loss(lp, i, torch.ones(1, 1)), "turn_index"),
    (lambda lp, i: offline_ppg_loss(lp, i, torch.ones(1, 2), reduction="max"), "reduction"),
    (lambda lp, i: online_ppg_loss(lp, lp[:, :2], i, torch.ones(1, 2)), "ref_token_logp"),
    (lambda lp, i: online_ppg_loss(lp, lp, i, torch.ones(1, 2), kl_estimator="k4"), "kl_estimator"),
])
def test_loss_errors_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call(torch.zeros(1, 3), torch.tensor([[-1, 0, 1]]))


@pytest.mark.parametrize("lora", [False, True])
def test_the_head_at_target_positions_gives_the_full_logits_loss_and_gradients(tiny_model, lora):
    """target_logprobs (head only where a target is predicted, in checkpointed chunks) against
    token_logprobs over the whole [B, L, V] logits: the same offline loss and the same gradient
    of every trainable parameter, to 1e-5, with padding and a chunk smaller than the targets."""
    from transformers import AutoModelForCausalLM

    from ppg.losses import target_logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for name, q in model.named_parameters():  # nonzero B so the adapters change the output
            if "lora_B" in name:
                torch.nn.init.normal_(q, std=0.02)
    B, L = 3, 40
    ids = torch.randint(5, model.config.vocab_size, (B, L))
    attn = torch.ones(B, L, dtype=torch.long)
    attn[2, :7] = 0  # left padding
    turn_index = torch.full((B, L), -1)
    turn_index[0, 5:12], turn_index[0, 20:30], turn_index[1, 1:39], turn_index[2, 30:] = 0, 1, 0, 2
    weights = torch.tensor([[0.5, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.5]])
    grads = []
    for path in ("full", "targets"):
        model.zero_grad()
        if path == "full":
            lp = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
        else:
            lp = target_logprobs(model, ids, attn, turn_index, chunk=16)
        out = offline_ppg_loss(lp, turn_index, weights)
        out.loss.backward()
        grads.append((out.loss.detach(), torch.where(turn_index >= 0, lp, 0).detach(),
                      {n: q.grad.clone() for n, q in model.named_parameters() if q.requires_grad}))
    (loss_a, lp_a, g_a), (loss_b, lp_b, g_b) = grads
    assert torch.allclose(loss_a, loss_b, atol=1e-5) and torch.allclose(lp_a, lp_b, atol=1e-5)
    assert g_a.keys() == g_b.keys() and (not lora or all("lora" in n for n in g_a))
    for n in g_a:
        assert torch.allclose(g_a[n], g_b[n], atol=1e-5, rtol=1e-4), n
    assert sum(float(g.abs().sum()) for g in g_a.values()) > 0
