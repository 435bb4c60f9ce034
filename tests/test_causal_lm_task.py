"""The causal-LM task (hf-llama-*): next-token blocks, loss, per-sample outputs, perplexity, CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from plprune.cli import main
from plprune.data import WordTokenizer, pydoc_corpus, read_wikitext_dir
from plprune.data.causal_lm import IGNORE_INDEX, CausalLmData, make_lm_blocks, prepare_causal_lm_data
from plprune.errors import DataError, PlpruneError
from plprune.models.hf_llama import CausalLmConfig, HfLlamaForCausalLM
from plprune.run_config import RunConfig
from plprune.runner import train_run
from plprune.tasks.causal_lm import CausalLmTask
from plprune.train.checkpoint import load_checkpoint

TINY_MODEL = ["--layers", "1", "--hidden", "16", "--heads", "4", "--kv-heads", "2", "--ffn", "24"]


def tiny_model(vocab_size: int, seq_len: int = 16) -> HfLlamaForCausalLM:
    """1 layer, hidden 16, 4 query heads of 4 dims sharing 2 key/value heads."""
    config = CausalLmConfig(
        vocab_size=vocab_size, hidden_size=16, num_layers=1, num_heads=4, num_kv_heads=2, ffn_size=24,
        max_length=seq_len,
    )  # fmt: skip
    return HfLlamaForCausalLM(config)


@pytest.fixture
def tiny_task(tiny_wikitext_dir: Path) -> tuple[HfLlamaForCausalLM, CausalLmTask]:
    corpus = read_wikitext_dir(tiny_wikitext_dir)
    data = prepare_causal_lm_data(corpus, WordTokenizer.build(corpus.train, min_freq=1), seq_len=16)
    return tiny_model(data.tokenizer.vocab_size), CausalLmTask(data, batch_size=4, seed=3, eval_batches=2)


def test_blocks_are_contiguous_and_labels_are_the_next_tokens() -> None:
    inputs, labels = make_lm_blocks([10, 11, 12, 1, 14, 15, 16, 17], seq_len=3, ignore_ids={1})
    assert inputs.tolist() == [[10, 11, 12], [1, 14, 15]]  # (8 - 1) // 3 blocks; 16, 17 dropped
    assert labels.tolist() == [[11, 12, IGNORE_INDEX], [14, 15, 16]]  # [UNK] (1) is never a target
    inputs, labels = make_lm_blocks(torch.arange(7), seq_len=3)
    assert inputs.tolist() == [[0, 1, 2], [3, 4, 5]] and labels.tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(DataError, match="fewer than one block of seq_len=3 plus its next token"):
        make_lm_blocks([1, 2, 3], seq_len=3)
    with pytest.raises(DataError, match="must be integers"):
        make_lm_blocks(torch.ones(9), seq_len=3)


def test_prepared_corpus_shifts_by_one_token_across_blocks(tiny_wikitext_dir: Path) -> None:
    corpus = read_wikitext_dir(tiny_wikitext_dir)
    tokenizer = WordTokenizer.build(corpus.train, min_freq=1)
    data = prepare_causal_lm_data(corpus, tokenizer, seq_len=16)
    stream = torch.tensor(tokenizer.encode(corpus.test))
    n = data.test_inputs.shape[0]
    assert n == (stream.numel() - 1) // 16
    assert torch.equal(data.test_inputs.flatten(), stream[: n * 16])
    expected = stream[1 : n * 16 + 1].masked_fill(stream[1 : n * 16 + 1] == tokenizer.unk_id, IGNORE_INDEX)
    assert torch.equal(data.test_labels.flatten(), expected)
    assert (data.test_labels == IGNORE_INDEX).any()  # the fixture's <unk> is ignored as a target
    with pytest.raises(DataError, match="must be 2-D tensors of one shape"):
        CausalLmData(
            data.train_inputs, data.train_labels[:, :3], data.test_inputs, data.test_labels, tokenizer, "x"
        )


def test_model_is_grouped_query_attention() -> None:
    model = tiny_model(30)
    attention = model.hf.model.layers[0].self_attn
    assert attention.q_proj.out_features == 16
    assert attention.k_proj.out_features == attention.v_proj.out_features == 8
    assert model.hf.lm_head.weight is model.hf.model.embed_tokens.weight  # tied embeddings
    with pytest.raises(PlpruneError, match=r"num_kv_heads \(3\) must divide num_heads \(4\)"):
        CausalLmConfig(vocab_size=30, hidden_size=16, num_heads=4, num_kv_heads=3)
    with pytest.raises(PlpruneError, match=r"kv_heads \(3\) must divide heads \(8\)"):
        RunConfig.from_dict({"task": "hf-llama-pydoc", "model": {"kv_heads": 3}})
    with pytest.raises(PlpruneError, match="sequence length 17 exceeds max_length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_is_the_hand_computed_next_token_cross_entropy(tiny_task) -> None:
    model, task = tiny_task
    input_ids, labels = task.train_batch(0)
    labels = labels.clone()
    labels[0, :5] = IGNORE_INDEX  # a few positions without a target
    logits = model(input_ids).logits  # (B, T, V)
    log_probs = logits.log_softmax(-1)
    terms = [
        -log_probs[b, t, labels[b, t]]
        for b in range(labels.shape[0])
        for t in range(labels.shape[1])
        if labels[b, t] != IGNORE_INDEX
    ]
    expected = torch.stack(terms).mean()
    assert torch.allclose(task.loss(model, (input_ids, labels)), expected, atol=1e-6)
    # causality: changing the last input token changes only the last position's logits
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.hf.config.vocab_size
    other = model(changed).logits
    assert torch.allclose(other[:, :-1], logits[:, :-1], atol=1e-6) and not torch.allclose(other, logits)


def test_per_sample_outputs_agree_with_the_batch_loss(tiny_task) -> None:
    model, task = tiny_task
    input_ids, labels = task.train_batch(1)
    labels = labels.clone()
    labels[1, 3:] = IGNORE_INDEX  # samples with different numbers of targets
    per_sample = task.per_sample_output(model, (input_ids, labels))
    counts = (labels != IGNORE_INDEX).sum(dim=1).to(per_sample.dtype)
    assert per_sample.shape == (4,)
    batch_loss = task.loss(model, (input_ids, labels))
    assert torch.allclose((per_sample * counts).sum() / counts.sum(), batch_loss, atol=1e-6)
    for j in range(4):
        alone = task.loss(model, (input_ids[j : j + 1], labels[j : j + 1]))
        assert torch.allclose(per_sample[j], alone, atol=1e-6)
    logit = task.per_sample_output(model, (input_ids, labels), kind="logit")
    true_logits = model(input_ids).logits.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    assert torch.allclose(logit[1], true_logits[1, :3].mean(), atol=1e-6)
    assert task.loss_units((input_ids, labels)) == int(counts.sum())
    with pytest.raises(PlpruneError, match="kernel output"):
        task.per_sample_output(model, (input_ids, labels), kind="entropy")


def test_evaluation_perplexity_is_exp_of_the_mean_token_loss(tiny_task) -> None:
    model, task = tiny_task
    metrics = task.evaluate(model, full=True)
    data = task.data
    with torch.no_grad():
        logits = model(data.test_inputs).logits
    mask = data.test_labels != IGNORE_INDEX
    token_losses = torch.nn.functional.cross_entropy(
        logits.double().flatten(0, 1), data.test_labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    mean = float(token_losses.sum() / mask.sum())
    assert metrics["test_loss"] == pytest.approx(mean, rel=1e-9)
    assert metrics["test_ppl"] == pytest.approx(math.exp(mean), rel=1e-9)
    assert metrics["delta_ppl"] == pytest.approx(metrics["test_ppl"] - metrics["train_ppl"])
    assert model.training  # evaluate restores the mode
    assert task.evaluate(model) == task.evaluate(model)  # fixed evaluation batches


def test_batches_are_seeded_and_pydoc_builds() -> None:
    corpus = pydoc_corpus()
    data = prepare_causal_lm_data(corpus, WordTokenizer.build(corpus.train, min_freq=2), seq_len=32)
    a, b = CausalLmTask(data, 8, seed=5), CausalLmTask(data, 8, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.train_batch(17), b.train_batch(17), strict=True))
    assert not torch.equal(a.train_batch(0)[0], CausalLmTask(data, 8, seed=6).train_batch(0)[0])


def _train(capsys, out: Path, data_dir: Path, *extra: str) -> dict:
    # fmt: off
    argv = [
        "train", "--task", "hf-llama-wikitext2", "--data-dir", str(data_dir), *TINY_MODEL,
        "--seq-len", "16", "--min-freq", "1", "--batch-size", "4", "--steps", "8", "--eval-every", "4",
        "--eval-batches", "2", "--seed", "2", "--no-progress", "--out", str(out), *extra,
    ]
    # fmt: on
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads((out / "summary.json").read_text())


def _numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time" and "seconds" not in k} for r in records]


def test_cli_dense_run_is_finite_and_deterministic(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    first = _train(capsys, tmp_path / "a", tiny_wikitext_dir)
    second = _train(capsys, tmp_path / "b", tiny_wikitext_dir)
    assert first["task"] == "hf-llama-wikitext2" and first["final"]["final"] is True
    assert math.isfinite(first["final"]["test_ppl"]) and first["final"]["test_ppl"] > 1
    assert _numbers(first["history"]) == _numbers(second["history"])
    state_a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    state_b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(tensor, state_b[name]) for name, tensor in state_a.items())
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model"]["kv_heads"] == 2 and config["model"]["dropout"] == 0.0  # the task's defaults


def test_cli_random_pruning_of_query_heads(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "random"
    summary = _train(
        capsys, out, tiny_wikitext_dir, "--method", "random", "--prune-ratio", "0.5", "--prune-at", "4"
    )
    event = summary["pruning_events"][0]
    assert event["groups"] == [f"head:L0.{h}" for h in range(4)]
    assert 0 < summary["final"]["pruned_head_ratio"] <= 0.5
    assert math.isfinite(summary["final"]["test_ppl"])
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    prefix = "hf.model.layers.0.self_attn"
    for head, kept in enumerate(event["mask"]):
        rows = slice(4 * head, 4 * head + 4)
        if not kept:  # a pruned query head: its W_Q rows and W_O columns are exactly zero
            assert float(state[f"{prefix}.q_proj.weight"][rows].abs().sum()) == 0.0
            assert float(state[f"{prefix}.o_proj.weight"][:, rows].abs().sum()) == 0.0


def test_cli_random_pruning_of_heads_and_neurons(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    summary = _train(
        capsys, tmp_path / "both", tiny_wikitext_dir, "--method", "random", "--kinds", "head,neuron",
        "--kind-ratios", "head=0.5,neuron=0.25", "--prune-at", "4", "--no-diagnostics",
    )  # fmt: skip
    final = summary["final"]
    assert 0 < final["pruned_head_ratio"] <= 0.5 and 0 < final["pruned_neuron_ratio"] <= 0.25
    assert math.isfinite(final["test_ppl"])
    # plprune export of the run: the compacted model reloads with plprune.load and computes the masked one
    import plprune
    from plprune.run_export import model_from_run

    assert main(["export", str(tmp_path / "both"), "--out", str(tmp_path / "export")]) == 0
    loaded = plprune.load(tmp_path / "export")
    masked, _, _, _ = model_from_run(tmp_path / "both")
    ids = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (loaded(ids).logits - masked(ids).logits).abs().max() <= 1e-5
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in masked.parameters())


def test_kv_heads_is_refused_on_other_tasks(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    config = RunConfig.from_dict(
        {"task": "bert-wikitext2", "data": {"data_dir": str(tiny_wikitext_dir)}, "model": {"kv_heads": 2}}
    )
    with pytest.raises(PlpruneError, match=r"kv_heads .* applies to the tasks hf-llama-wikitext2"):
        train_run(config, tmp_path / "bert", progress=False)


class _StopError(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    from plprune.train.callbacks import Callback

    config = RunConfig.from_dict(
        {
            "task": "hf-llama-wikitext2",
            "data": {"data_dir": str(tiny_wikitext_dir), "seq_len": 16, "min_freq": 1},
            "model": {"layers": 1, "hidden": 16, "heads": 4, "kv_heads": 2, "ffn": 24, "dropout": 0.0},
            "train": {"steps": 8, "batch_size": 4, "eval_every": 4, "checkpoint_every": 4, "eval_batches": 2},
        }
    )
    full = train_run(config, tmp_path / "full", progress=False)

    class StopAt(Callback):
        def on_step_end(self, trainer, step):  # checkpoints are written after this hook's step
            if step == 5:
                raise _StopError

    with pytest.raises(_StopError):
        train_run(config, tmp_path / "resumed", callbacks=[StopAt()], progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 4
    resumed = train_run(config, tmp_path / "resumed", resume=True, progress=False)
    assert _numbers(resumed["history"]) == _numbers(full["history"])
    full_state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    resumed_state = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert all(torch.equal(tensor, resumed_state[name]) for name, tensor in full_state.items())
