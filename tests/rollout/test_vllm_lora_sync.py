"""Adapter-only weight sync to vLLM (`grpokit.rollout.lora_sync`): the pure parts, a real server started
with --enable-lora, and (run inside the vLLM environment) a colocated LLM.

Tolerance of vLLM-with-adapter vs the trainer's LoRA policy, both float32: vLLM computes the same
x·Wᵀ + s·(x·Aᵀ)·Bᵀ as peft, in another summation order. A dot product of length d ≤ 128 rounds to a
relative error of about √d·u ≈ 7e-7 (u = 2⁻²⁴, rounding errors adding like a random walk); over the
~6 chained matmuls of a token's path through 2 layers and the lm_head that is ≈ 4e-6 relative on
logits of magnitude ≲ 10, so ≈ 4e-5 on a logit and at most twice that on a log-softmax: 1e-4. Measured:
2–4e-6. A lost adapter after one real step moves the log-probs by > 0.5 (measured 3.6), far outside.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.config_schema import ConfigError
from grpokit.models.logprobs import sequence_logprobs
from grpokit.rollout.lora_sync import (
    adapter_payload,
    adapter_sync_problems,
    choose_weight_sync,
    vllm_max_lora_rank,
)
from grpokit.rollout.types import SamplingParams
from grpokit.rollout.vllm_engine import named_weights_for_vllm
from grpokit.vllm_server.app import adapter_config_of, write_adapter_dir

LOGPROB_TOLERANCE = 1e-4  # derived in the module docstring
ADAPTER_MATTERS = 0.05  # the base alone must be this far from the trained LoRA policy, or the test proves nothing
PROMPTS = ["12+34=", "5+6=", "7*8="]
CAPABLE = {"enabled": True, "max_lora_rank": 8, "disabled_because": None,
           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def _lora(model_dir, **settings):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    config = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "task_type": "CAUSAL_LM", **settings}
    return get_peft_model(model, LoraConfig(**config))


def _train_one_step(model, engine, prompts, lr: float = 3e-2):
    """A real update that raises the sampled completions' likelihood (B moves off 0); → the batch."""
    batch = engine.generate(prompts, 2, SamplingParams(max_new_tokens=10, temperature=1.0, seed=1))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    input_ids, attention_mask = batch.model_inputs()
    logp, _ = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])
    (-(logp * batch.completion_mask).sum()).backward()
    optimizer.step()
    return batch


def _engine_vs_trainer_after_an_update(engine, model):
    """(max |engine − trainer|, max |base − trainer|) on fresh samples after one update and a sync."""
    engine.sync_weights(model)
    _train_one_step(model, engine, PROMPTS)
    engine.sync_weights(model)
    batch = engine.generate(PROMPTS, 3, SamplingParams(max_new_tokens=10, temperature=1.0, seed=4))
    input_ids, attention_mask = batch.model_inputs()
    mask = batch.completion_mask.bool()
    with torch.no_grad():
        trainer = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])[0]
        with model.disable_adapter():
            base = sequence_logprobs(model, input_ids, attention_mask, batch.completion_ids.shape[1])[0]
    return (float((batch.behaviour_logprobs - trainer)[mask].abs().max()),
            float((base - trainer)[mask].abs().max()))


# ---------------------------------------------------------------------- pure parts
def test_vllm_max_lora_rank_is_the_smallest_allowed_rank_that_holds_the_adapter():
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 16, 17, 320, 321, 512, 513)] == \
        [1, 8, 8, 16, 32, 320, 512, 512, None]


def test_weight_sync_choice_adapter_when_possible_merged_otherwise_and_forced_adapter_fails_in_one_line():
    assert choose_weight_sync("merged", []) == ("merged", None)
    assert choose_weight_sync("auto", []) == ("adapter", None)
    assert choose_weight_sync("auto", [], "cuda") == ("adapter", None)
    # vLLM's CPU backend applies adapters per token with plain einsums: merged pushes are faster there
    assert choose_weight_sync("auto", [], "cpu") == ("merged", None)
    assert choose_weight_sync("auto", ["LoRA rank 64 is above vLLM's max_lora_rank 16"], "cpu") == ("merged", None)
    assert choose_weight_sync("adapter", [], "cpu") == ("adapter", None)
    assert choose_weight_sync("adapter", []) == ("adapter", None)
    assert choose_weight_sync("auto", ["the policy has no LoRA adapter"]) == ("merged", None)  # nothing to warn
    mode, warning = choose_weight_sync("auto", ["LoRA rank 64 is above vLLM's max_lora_rank 16"])
    assert mode == "merged" and "rank 64" in warning and "\n" not in warning
    with pytest.raises(ConfigError, match="adapter is impossible here: LoRA rank 64") as error:
        choose_weight_sync("adapter", ["LoRA rank 64 is above vLLM's max_lora_rank 16"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="weight_sync"):
        choose_weight_sync("adapters", [])


def test_sync_problems_name_what_vllm_cannot_apply(vllm_model_dir):
    plain = AutoModelForCausalLM.from_pretrained(vllm_model_dir)
    assert adapter_sync_problems(plain, CAPABLE) == ["the policy has no LoRA adapter"]
    assert adapter_sync_problems(_lora(vllm_model_dir), CAPABLE) == []
    assert adapter_sync_problems(_lora(vllm_model_dir, r=16), CAPABLE) == \
        ["LoRA rank 16 is above vLLM's max_lora_rank 8"]
    problems = adapter_sync_problems(_lora(vllm_model_dir, target_modules=["q_proj", "lm_head"]), CAPABLE)
    assert len(problems) == 1 and "LoRA on ['lm_head']" in problems[0]
    problems = adapter_sync_problems(_lora(vllm_model_dir, modules_to_save=["lm_head"]), CAPABLE)
    assert problems == ["modules_to_save ['lm_head'] are full weights, not an adapter"]
    off = {**CAPABLE, "enabled": False, "disabled_because": "the vLLM server was started without --enable-lora"}
    assert adapter_sync_problems(_lora(vllm_model_dir), off) == [off["disabled_because"]]


def test_the_adapter_push_is_peft_saved_format_and_loads_back_to_the_same_policy(vllm_model_dir, tmp_path):
    from peft import PeftModel

    model = _lora(vllm_model_dir)
    with torch.no_grad():  # B ≠ 0, so the adapter changes the outputs
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    payload = adapter_payload(model)
    write_adapter_dir(str(tmp_path / "pushed"), payload)
    model.save_pretrained(tmp_path / "peft")
    from safetensors.torch import load_file

    pushed, saved = load_file(tmp_path / "pushed" / "adapter_model.safetensors"), \
        load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert pushed.keys() == saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in saved)
    config = json.loads((tmp_path / "pushed" / "adapter_config.json").read_text())
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config == adapter_config_of(payload)
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == \
        (peft_config["r"], peft_config["lora_alpha"], sorted(peft_config["target_modules"]))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(vllm_model_dir).float(),
                                       tmp_path / "pushed")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        with model.disable_adapter():
            assert not torch.allclose(model(ids).logits, loaded(ids).logits)
    # r·(d_in + d_out) numbers per adapted module against d_in·d_out: at d = 64–128 and r = 8, ≈ 5× fewer
    merged_bytes = sum(t.numel() * t.element_size() for _, t in named_weights_for_vllm(model))
    assert len(payload) < merged_bytes / 4


def test_forcing_adapter_sync_without_a_lora_policy_is_a_one_line_config_error(tmp_path):
    from types import SimpleNamespace

    from grpokit.trainers.lm_build import build_engine
    from grpokit.trainers.lm_config import load_lm_config

    config = load_lm_config({
        "model": {"name_or_path": str(tmp_path)}, "data": {"path": "unused"},
        "rewards": [{"function": "exact_match"}],
        "rollout": {"engine": "vllm_server", "vllm": {"weight_sync": "adapter"}},
    })
    policy = SimpleNamespace(is_lora=False, model=torch.nn.Linear(1, 1), tokenizer=None)
    with pytest.raises(ConfigError, match="weight_sync: adapter needs a LoRA policy") as error:
        build_engine(config, policy, "cpu")  # before any connection is attempted
    assert "\n" not in str(error.value)


def test_a_body_without_adapter_config_is_refused():
    from safetensors.torch import save

    with pytest.raises(ValueError, match="no adapter_config"):
        adapter_config_of(save({"x": torch.zeros(2)}))
    with pytest.raises(ValueError, match="too short"):
        adapter_config_of(b"abc")


def test_unmerged_weights_are_the_base_weights(vllm_model_dir):
    model = _lora(vllm_model_dir)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.1)
    base = dict(AutoModelForCausalLM.from_pretrained(vllm_model_dir).float().state_dict())
    unmerged = dict(named_weights_for_vllm(model, merge_lora=False))
    merged = dict(named_weights_for_vllm(model))
    assert unmerged.keys() == merged.keys() and set(base) <= set(unmerged)
    assert all(torch.equal(unmerged[k], base[k]) for k in base)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])


# ---------------------------------------------------------------------- a real server with --enable-lora
@pytest.fixture(scope="module")
def lora_server_url(vllm_python, vllm_model_dir, tmp_path_factory):
    from grpokit.rollout.vllm_env import vllm_server

    log_path = tmp_path_factory.mktemp("vllm_lora_server") / "server.log"
    with vllm_server(str(vllm_model_dir), python=vllm_python, log_path=log_path, timeout=300,
                     args=("--dtype", "float32", "--kv-cache-gib", "1", "--max-model-len", "256",
                           "--enable-lora", "--max-lora-rank", "8")) as url:
        yield url


def test_server_adapter_sync_serves_the_trained_lora_policy_and_not_its_base(lora_server_url, vllm_model_dir):
    from grpokit.rollout.vllm_engine import VLLMServerEngine

    model = _lora(vllm_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    auto = VLLMServerEngine(lora_server_url, tokenizer, eos_token_ids=[2], weight_sync="auto")
    assert auto.lora_capabilities()["device"] == "cpu"
    auto.sync_weights(model)
    assert auto.sync_mode == "merged"  # auto on vLLM's CPU backend: see choose_weight_sync
    engine = VLLMServerEngine(lora_server_url, tokenizer, eos_token_ids=[2], weight_sync="adapter")
    assert engine.lora_capabilities()["max_lora_rank"] == 8
    mismatch, base_gap = _engine_vs_trainer_after_an_update(engine, model)
    assert engine.sync_mode == "adapter" and engine.last_sync["mode"] == "adapter"
    assert base_gap > ADAPTER_MATTERS  # the trained adapter changes the policy...
    assert mismatch <= LOGPROB_TOLERANCE  # ...and the server applies it
    assert engine.health()["weight_version"] == engine.weight_version
    assert engine._request("/lora")["adapter"] is not None
    merged_bytes = sum(t.numel() * t.element_size() for _, t in named_weights_for_vllm(model))
    assert engine.last_sync["bytes"] == len(adapter_payload(model)) < merged_bytes / 4


def test_a_full_push_drops_the_servers_adapter_and_a_bad_push_keeps_it(lora_server_url, vllm_model_dir):
    from grpokit.rollout.vllm_engine import VLLMServerEngine

    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    adapter_engine = VLLMServerEngine(lora_server_url, tokenizer, weight_sync="adapter")
    adapter_engine.sync_weights(_lora(vllm_model_dir))
    name = adapter_engine._request("/lora")["adapter"]
    with pytest.raises(RuntimeError, match="422.*cannot load the adapter.*rank"):
        adapter_engine._push_adapter(adapter_payload(_lora(vllm_model_dir, r=16)), adapter_engine.weight_version)
    with pytest.raises(RuntimeError, match="422.*not an adapter push"):
        adapter_engine._request("/load_adapter", b"not safetensors", {})
    assert adapter_engine._request("/lora")["adapter"] == name
    VLLMServerEngine(lora_server_url, tokenizer).sync_weights(AutoModelForCausalLM.from_pretrained(vllm_model_dir))
    assert adapter_engine._request("/lora")["adapter"] is None


def test_without_enable_lora_auto_falls_back_to_merged_and_forced_adapter_is_a_config_error(
        vllm_server_url, vllm_model_dir, caplog, monkeypatch):
    from grpokit.rollout.vllm_engine import VLLMServerEngine

    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    engine = VLLMServerEngine(vllm_server_url, tokenizer, weight_sync="auto")
    with caplog.at_level("INFO", logger="grpokit.rollout"):
        engine.sync_weights(_lora(vllm_model_dir))
    assert engine.sync_mode == "merged"  # on this CPU server auto is merged anyway: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("merged weights" in r.getMessage() and "CPU backend" in r.getMessage() for r in caplog.records)
    # where auto would pick the adapter (a GPU server), the fallback says why in one warning
    gpu = VLLMServerEngine(vllm_server_url, tokenizer, weight_sync="auto")
    monkeypatch.setattr(gpu, "lora_capabilities", lambda: {**engine.lora_capabilities(), "device": "cuda"})
    caplog.clear()
    gpu.sync_weights(_lora(vllm_model_dir))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert gpu.sync_mode == "merged" and len(warnings) == 1 and "--enable-lora" in warnings[0]
    with pytest.raises(ConfigError, match="adapter is impossible here: the vLLM server was started without"):
        VLLMServerEngine(vllm_server_url, tokenizer, weight_sync="adapter").sync_weights(_lora(vllm_model_dir))


def _trained_adapter_dir(model_dir: Path, directory: Path) -> Path:
    """A LoRA adapter with B ≠ 0 saved as peft saves it (the policy a resumed run starts from)."""
    model = _lora(model_dir, r=4, lora_alpha=8)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)
    return directory


def _lora_trainer(tmp_path: Path, adapter_dir: Path, **rollout):
    from grpokit.data import PromptDataset
    from grpokit.trainers.lm_build import build_trainer
    from grpokit.trainers.lm_config import load_lm_config

    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    config = load_lm_config({
        "model": {"name_or_path": str(adapter_dir)},
        "data": {"path": "unused-when-data-is-passed"},
        "rewards": [{"function": "length", "kwargs": {"target_length": 3}}],
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.0}},
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 6, **rollout},
        "training": {"max_steps": 2, "micro_batch_size": 8, "learning_rate": 1e-2},
        "eval": {"every_steps": 0},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False, "plot": False},
    })
    return build_trainer(config, train_data=PromptDataset.from_records(records))


def test_a_lora_trainer_on_adapter_pushes_stays_on_policy_and_a_lost_adapter_fails_the_step0_guard(
        tmp_path, lora_server_url, vllm_model_dir):
    from grpokit.monitoring import read_metrics
    from grpokit.rollout.mismatch import BehaviourMismatchError

    adapter_dir = _trained_adapter_dir(vllm_model_dir, tmp_path / "adapter")
    rollout = {"engine": "vllm_server", "vllm": {"server_url": lora_server_url, "weight_sync": "adapter"}}
    trainer = _lora_trainer(tmp_path / "good", adapter_dir, **rollout)
    trainer.train()
    assert trainer.engine.sync_mode == "adapter" and trainer.engine.weight_version >= 3
    rows = [r for r in read_metrics(tmp_path / "good" / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(r["train/mismatch_abs_logratio_mean"] < LOGPROB_TOLERANCE for r in rows)

    lost = _lora_trainer(tmp_path / "lost", adapter_dir, **rollout)
    lost.engine._push_adapter = lambda payload, version: len(payload)  # the base lands, the adapter never does
    with pytest.raises(BehaviourMismatchError, match="adapter was not applied"):
        lost.train()
    assert lost.step == 0


# ---------------------------------------------------------------------- colocated, in the vLLM environment
def test_colocated_lora_sync_cases_pass_in_the_vllm_environment(vllm_python):
    """Runs this file's `colocated_*` functions with pytest under the vLLM environment's Python (vLLM and
    the trainer in one process need its packages; see test_vllm_colocate.py)."""
    here = Path(__file__)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [str(vllm_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         "-o", "python_functions=colocated_*", "-W", "ignore::DeprecationWarning", str(here)],
        cwd=here.parents[2], env=env, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"colocated LoRA cases failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert "2 passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def colocated_adapter_sync_serves_the_trained_lora_policy_and_evicts_old_adapters(vllm_model_dir):
    from grpokit.rollout.vllm_engine import VLLMColocateEngine

    engine = VLLMColocateEngine(str(vllm_model_dir), AutoTokenizer.from_pretrained(vllm_model_dir), dtype="float32",
                                kv_cache_gib=1, max_model_len=256, eos_token_ids=[2], weight_sync="adapter",
                                lora_rank=8)
    model = _lora(vllm_model_dir)
    mismatch, base_gap = _engine_vs_trainer_after_an_update(engine, model)
    assert engine.sync_mode == "adapter"
    assert base_gap > ADAPTER_MATTERS and mismatch <= LOGPROB_TOLERANCE
    engine.sync_weights(model)
    loaded = engine.llm.llm_engine.list_loras()
    assert loaded == {engine.adapter.request.lora_int_id}  # one adapter in vLLM, one on disk
    assert os.listdir(engine.adapter.directory.name) == [os.path.basename(engine.adapter.request.lora_path)]


def colocated_lora_trainer_on_adapter_pushes_stays_on_policy(tmp_path, vllm_model_dir):
    from grpokit.monitoring import read_metrics

    adapter_dir = _trained_adapter_dir(vllm_model_dir, tmp_path / "adapter")
    trainer = _lora_trainer(tmp_path, adapter_dir, engine="vllm_colocate",
                            vllm={"model": str(vllm_model_dir), "dtype": "float32", "kv_cache_gib": 1,
                                  "max_model_len": 256, "weight_sync": "adapter"})
    trainer.train()
    assert trainer.engine.sync_mode == "adapter"
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(r["train/mismatch_abs_logratio_mean"] < LOGPROB_TOLERANCE for r in rows)
