from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpokit.algorithms import (
    logprobs_and_entropy_from_hidden,
    logprobs_and_entropy_from_logits,
    naive_logprobs_and_entropy,
    top_entropy_mask,
)

from ._strategies import FAST

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_uniform_two_way_entropy_is_ln2():
    logp, entropy = logprobs_and_entropy_from_logits(
        torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long)
    )
    assert entropy.item() == pytest.approx(math.log(2))
    assert logp.item() == pytest.approx(-math.log(2))
    assert logp.dtype == entropy.dtype == torch.float32


def test_bf16_logits_give_float32_results_and_bf16_gradient():
    logits = torch.randn(2, 3, 7).bfloat16().requires_grad_()
    labels = torch.randint(0, 7, (2, 3))
    logp, entropy = logprobs_and_entropy_from_logits(logits, labels, chunk_size=2)
    assert logp.dtype == entropy.dtype == torch.float32
    (logp.sum() + entropy.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16
    ref_logp, ref_entropy = naive_logprobs_and_entropy(logits.detach(), labels)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(entropy, ref_entropy)


def test_without_entropy_returns_none():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    logp, entropy = logprobs_and_entropy_from_logits(
        logits, torch.zeros(1, 3, dtype=torch.long), with_entropy=False
    )
    assert entropy is None
    logp.sum().backward()
    assert logits.grad is not None


def _upstream(seed, shape):
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(
        shape, generator=gen, dtype=torch.float64
    )


@FAST
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    length=st.integers(1, 6),
    vocab=st.integers(2, 17),
    chunk=st.integers(1, 8),
    temperature=st.sampled_from([1.0, 0.7, 1.3]),
    use_entropy_grad=st.booleans(),
)
def test_chunked_from_logits_matches_naive_values_and_gradients(
    seed, batch, length, vocab, chunk, temperature, use_entropy_grad
):
    gen = torch.Generator().manual_seed(seed)
    # a non-flattenable slice, like logits[:, -T-1:-1] of a causal LM
    full = (torch.randn(batch, length + 2, vocab, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    logits = full[:, 1:-1]
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    g, h = _upstream(seed, (batch, length))
    h = h if use_entropy_grad else torch.zeros_like(h)

    logp, entropy = logprobs_and_entropy_from_logits(
        logits, labels, temperature=temperature, chunk_size=chunk
    )
    (grad,) = torch.autograd.grad((logp * g + entropy * h).sum(), full)
    ref_logp, ref_entropy = naive_logprobs_and_entropy(logits, labels, temperature)
    (ref_grad,) = torch.autograd.grad((ref_logp * g + ref_entropy * h).sum(), full)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(entropy, ref_entropy)
    torch.testing.assert_close(grad, ref_grad)


@FAST
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    length=st.integers(1, 6),
    vocab=st.integers(2, 17),
    hidden_size=st.integers(1, 5),
    chunk=st.integers(1, 8),
    temperature=st.sampled_from([1.0, 0.6]),
    with_bias=st.booleans(),
)
def test_chunked_from_hidden_matches_naive_values_and_gradients(
    seed, batch, length, vocab, hidden_size, chunk, temperature, with_bias
):
    gen = torch.Generator().manual_seed(seed)
    hidden_full = torch.randn(
        batch, length + 1, hidden_size, generator=gen, dtype=torch.float64
    ).requires_grad_()
    hidden = hidden_full[:, :-1]
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64).requires_grad_() if with_bias else None
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    g, h = _upstream(seed, (batch, length))
    inputs = (hidden_full, weight) + ((bias,) if with_bias else ())

    logp, entropy = logprobs_and_entropy_from_hidden(
        hidden, weight, labels, lm_head_bias=bias, temperature=temperature, chunk_size=chunk
    )
    grads = torch.autograd.grad((logp * g + entropy * h).sum(), inputs)
    logits = hidden @ weight.T + (bias if with_bias else 0)
    ref_logp, ref_entropy = naive_logprobs_and_entropy(logits, labels, temperature)
    ref_grads = torch.autograd.grad((ref_logp * g + ref_entropy * h).sum(), inputs)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(entropy, ref_entropy)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref)


def test_chunked_from_hidden_passes_gradcheck():
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    fn = lambda hd, w, b: logprobs_and_entropy_from_hidden(hd, w, labels, lm_head_bias=b, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


# Peak-RSS measurement at Qwen's vocabulary: the chunked path must stay below a bound that the naive
# full-vocabulary log-softmax exceeds. Each source runs in its own process (ru_maxrss is per process).
_MEMORY_SCRIPT = """
import resource, sys, torch
from grpokit.algorithms import (logprobs_and_entropy_from_hidden, logprobs_and_entropy_from_logits,
                                naive_logprobs_and_entropy)
source, B, T, V, H, CHUNK = sys.argv[1], 2, 128, 151_936, 32, 16
peak_mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
torch.manual_seed(0)
labels = torch.randint(0, V, (B, T))
if source == "hidden":
    hidden, weight = torch.randn(B, T, H, requires_grad=True), (torch.randn(V, H) * 0.05).requires_grad_()
    inputs = (hidden, weight)
    chunked = lambda: logprobs_and_entropy_from_hidden(hidden, weight, labels, chunk_size=CHUNK)
    naive = lambda: naive_logprobs_and_entropy(hidden @ weight.T, labels)
else:
    logits = torch.randn(B, T, V, requires_grad=True)
    inputs = (logits,)
    chunked = lambda: logprobs_and_entropy_from_logits(logits, labels, chunk_size=CHUNK)
    naive = lambda: naive_logprobs_and_entropy(logits, labels)
def forward_backward(fn):
    logp, entropy = fn()
    torch.autograd.grad((logp + entropy).sum(), inputs)
base = peak_mb()
forward_backward(chunked)
chunked_mb = peak_mb() - base
forward_backward(naive)
print(chunked_mb, peak_mb() - base, B * T * V * 4 / 2**20)
"""


def test_chunked_peak_memory_stays_below_bound_that_naive_exceeds():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Serve every allocation above 1 MiB by mmap so that freed chunk buffers leave the RSS at once: we measure
    # what the computation holds, not what glibc's free lists keep cached between chunks.
    env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    runs = {
        source: subprocess.Popen(
            [sys.executable, "-c", _MEMORY_SCRIPT, source], env=env, stdout=subprocess.PIPE, text=True
        )
        for source in ("hidden", "logits")
    }
    for source, proc in runs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        chunked_mb, naive_mb, full_logits_mb = map(float, out.split())
        # from logits, the gradient of the logits is itself one full logits tensor; from hidden nothing is
        bound_mb = full_logits_mb * (2.0 if source == "logits" else 1.0)
        assert chunked_mb < bound_mb < naive_mb, (source, chunked_mb, bound_mb, naive_mb)


def test_top_entropy_spec_case():
    entropy = torch.tensor([[0.1, 0.5, 0.9, 1.2, 0.3], [0.7, 0.8, 1.0, 0.2, 0.6]])
    keep = top_entropy_mask(entropy, torch.ones_like(entropy), 0.8)
    assert keep.sum() == 2 and keep[0, 3] and keep[1, 2]
    assert torch.quantile(entropy.flatten(), 0.8).item() == pytest.approx(0.92)


def test_top_entropy_ignores_padding_in_threshold_and_result():
    entropy = torch.tensor([[0.1, 0.2, 9.0], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    keep = top_entropy_mask(entropy, mask, 0.5)  # threshold over [0.1, 0.2, 0.3, 0.4] = 0.25
    assert keep.tolist() == [[False, False, False], [True, True, False]]


def test_top_entropy_uses_given_global_threshold_and_handles_empty_batch():
    entropy = torch.tensor([[0.1, 0.5]])
    assert top_entropy_mask(entropy, torch.ones(1, 2), threshold=0.3).tolist() == [[False, True]]
    assert not top_entropy_mask(entropy, torch.zeros(1, 2)).any()


def test_linear_quantile_matches_torch_quantile():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(values)
    for q in (0.0, 0.13, 0.5, 0.8, 1.0):
        threshold = torch.quantile(values, q)
        assert torch.equal(top_entropy_mask(values, mask, q), values >= threshold)
