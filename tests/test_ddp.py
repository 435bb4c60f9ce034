"""Data-parallel training and pruning on 2 CPU ranks (gloo): ``plprune train`` under the real ``torchrun``,
and ``plprune.Pruner`` in a user's own ``DistributedDataParallel`` loop (``torch.multiprocessing.spawn``).

References are single-process runs on the same global batches: the masks must be identical, the features,
gates and final metrics equal within float tolerance (the ranks sum gradients in a different order), and
the kernel features equal to ``compute_group_features`` on the concatenated samples, computed directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F

import plprune
from plprune.cli import main
from plprune.curvature import compute_group_features
from plprune.gates import GroupSet
from plprune.models import BertConfig, BertForMaskedLM
from tiny_data import write_tiny_wikitext

pytestmark = pytest.mark.skipif(
    not (tdist.is_available() and tdist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

SRC = Path(__file__).resolve().parents[1] / "src"
WORLD = 2
# relative tolerance on final metrics, DDP vs one process (measured: ~1e-7; float sums in another order)
METRIC_RTOL = 1e-5

TINY_RUN = [
    "--task", "bert-wikitext2", "--seq-len", "16", "--layers", "2", "--hidden", "16", "--heads", "4",
    "--ffn", "32", "--batch-size", "8", "--steps", "8", "--eval-every", "4", "--eval-batches", "1",
    "--min-freq", "1", "--dropout", "0", "--checkpoint-every", "4", "--no-progress",
    "--method", "pl", "--prune-ratio", "0.5", "--prune-at", "4", "--gate-steps", "2",
    "--feature-samples", "4",
]  # fmt: skip


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str, script: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m plprune.cli ARGS`` (or ``SCRIPT ARGS``) on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    program = ["-m", "plprune.cli"] if script is None else [str(script)]
    done = subprocess.run(
        [*command, *program, *args], env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_same_run(ddp: dict, single: dict) -> None:
    """Same masks, near-identical scores and gate training, final metrics within METRIC_RTOL."""
    assert ddp["world_size"] == WORLD and single["world_size"] == 1
    assert len(ddp["pruning_events"]) == len(single["pruning_events"]) == 1
    for a, b in zip(ddp["pruning_events"], single["pruning_events"], strict=True):
        assert a["mask"] == b["mask"] and not all(a["mask"])
        assert a["scores"] == pytest.approx(b["scores"], rel=1e-5, abs=1e-6)
        for key in ("min_eigenvalue", "entropy"):
            assert a["features"][key] == pytest.approx(b["features"][key], rel=1e-5)
        for x, y in zip(a["gate_training"], b["gate_training"], strict=True):
            assert x == pytest.approx(y, rel=1e-5)
    assert [r["step"] for r in ddp["history"]] == [r["step"] for r in single["history"]]  # no duplicates
    for a, b in zip(ddp["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=METRIC_RTOL)
    for key in ("train_loss", "train_ppl", "test_loss", "test_ppl"):
        assert ddp["final"][key] == pytest.approx(single["final"][key], rel=METRIC_RTOL), key
    assert ddp["nonzero_parameters"] == single["nonzero_parameters"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wikitext(tmp_path_factory.mktemp("wikitext"))


@pytest.fixture(scope="module")
def single_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: the same run in one process, on the whole global batch of 8."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["train", *TINY_RUN, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return summary(out)


def test_plprune_train_under_torchrun_matches_one_process(
    data_dir: Path, single_run: dict, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    done = torchrun("train", *TINY_RUN, "--data-dir", str(data_dir), "--out", str(out))
    assert done.stdout.count("run written to") == 1  # rank 0 reports
    assert_same_run(summary(out), single_run)
    assert len((out / "pruning.jsonl").read_text().splitlines()) == 1  # one line per event, not per rank
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 8 and not any(k.startswith("module.") for k in saved["model"])  # plain model


def test_whole_batch_gate_training_under_torchrun_matches_one_process(data_dir: Path, tmp_path: Path) -> None:
    """The paper's gate training on whole batches (``--gate-batch-size 0``): each rank's shard, gradients
    averaged over ranks (the default gathers the first samples of the global batch instead)."""
    args = [*TINY_RUN, "--gate-batch-size", "0", "--data-dir", str(data_dir)]
    assert main(["train", *args, "--out", str(tmp_path / "single")]) == 0
    torchrun("train", *args, "--out", str(tmp_path / "ddp"))
    assert_same_run(summary(tmp_path / "ddp"), summary(tmp_path / "single"))
    assert summary(tmp_path / "ddp")["pruning_events"][0]["pl_config"]["gate_batch_size"] == 0


# ``plprune train`` with a callback that stops both ranks after step 5 (as Ctrl-C would); run by torchrun
STOP_AFTER_STEP_5 = """
import sys
from plprune.cli import build_parser, resolve_config
from plprune.runner import train_run
from plprune.train.callbacks import Callback

class Stop(Callback):
    def on_step_end(self, trainer, step):
        if step == 5:
            raise KeyboardInterrupt

args = build_parser().parse_args(sys.argv[1:])
try:
    train_run(resolve_config(args), args.out, callbacks=[Stop()], progress=False)
except KeyboardInterrupt:
    print("stopped")
"""


def test_torchrun_resumes_its_own_checkpoint_and_matches_one_process(
    data_dir: Path, single_run: dict, tmp_path: Path
) -> None:
    """A 2-rank run stopped after step 5 (its checkpoint at step 3 lies between evaluations and before the
    pruning event at step 4) is resumed by 2 ranks; the reference checkpoints at other steps, which changes
    no number."""
    out, script = tmp_path / "resumed", tmp_path / "stop.py"
    script.write_text(STOP_AFTER_STEP_5)
    run = [*TINY_RUN, "--checkpoint-every", "3", "--data-dir", str(data_dir), "--out", str(out)]
    assert torchrun("train", *run, script=script).stdout.count("stopped") == WORLD
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (out / "summary.json").exists()
    torchrun("train", *run, "--resume")
    assert_same_run(summary(out), single_run)


# ----------------------------------------------------------------------------------------------------
# The Pruner in a user's own DDP loop
# ----------------------------------------------------------------------------------------------------

VOCAB, SEQ, GLOBAL_BATCH, EVENT = 30, 8, 8, 2


def tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    sizes = {"hidden_size": 16, "num_layers": 2, "num_heads": 4, "ffn_size": 32, "max_length": SEQ}
    # no dropout: each rank draws its own masks, so DDP and one process would differ by more than floats
    config = BertConfig(vocab_size=VOCAB, **sizes, dropout=0.0, attention_dropout=0.0)
    return BertForMaskedLM(config)


def global_batch(step: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(5, VOCAB, (GLOBAL_BATCH, SEQ), generator=gen)
    masked = torch.rand(GLOBAL_BATCH, SEQ, generator=gen) < 0.3
    masked[:, 0] = True
    return {"input_ids": ids, "labels": torch.where(masked, ids, torch.full_like(ids, -100))}


def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over samples of each sample's masked-token loss (through ``forward``, so a DDP wrapper works):
    with equal shards the ranks' mean is the global batch's loss."""
    labels = batch["labels"]
    logits = model(batch["input_ids"], labels, logits_at="all").logits
    tokens = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (tokens.sum(dim=1) / (labels != -100).sum(dim=1).clamp_min(1)).mean()


def user_loop(
    model: torch.nn.Module, batches, log_path: Path | None, snapshot: Path | None
) -> plprune.Pruner:
    """The user's loop, the same for DDP (``model`` a DDP wrapper, ``batches`` the rank's shard) and for
    the single-process reference; ``snapshot`` receives the weights just before the pruning event."""
    pruner = plprune.Pruner(
        model,
        plprune.scorers.PL(gate_steps=3, feature_samples=6),
        plprune.OneShot(EVENT, 0.5),
        kinds=("head",),
        loss_fn=loss_fn,
        batches=batches,
        log_path=log_path,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    pruner.attach(optimizer)
    for step in range(5):
        if step == EVENT and snapshot is not None:
            torch.save(pruner.model.state_dict(), snapshot)
        pruner.step(step)
        loss = loss_fn(model, batches(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return pruner


def _ddp_worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        import plprune.distributed as dist

        model = torch.nn.parallel.DistributedDataParallel(tiny_bert())

        def shard(step: int) -> dict[str, torch.Tensor]:  # DistributedSampler's layout: rows rank::world
            return {k: v[rank::WORLD] for k, v in global_batch(step).items()}

        snapshot = Path(out) / "at_event.pt" if rank == 0 else None
        torch.manual_seed(rank)  # ranks' RNG streams differ, as in many DDP scripts; nothing may depend on it
        pruner = user_loop(model, shard, Path(out) / "pruning.jsonl", snapshot)
        record = pruner.records[0]
        feats = record["features"]
        features = torch.tensor([feats["min_eigenvalue"], feats["entropy"]], dtype=torch.float64)
        weights = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
        checks = {
            "pruner_model_is_inner": pruner.model is model.module,
            "mask_identical": dist.all_equal(pruner.mask),
            "features_identical": dist.all_equal(features),
            "gates_identical": dist.all_equal(torch.tensor(record["gates"])),
            "weights_identical": dist.all_equal(weights),
        }
        if rank == 0:
            torch.save(
                {
                    "checks": checks,
                    "mask": pruner.mask,
                    "features": features,
                    "gates": torch.tensor(record["gates"]),
                    "weights": weights,
                },
                Path(out) / "rank0.pt",
            )
        tdist.barrier()  # no rank leaves while another still works
        del pruner, model  # DDP's reducer goes before its process group (else gloo can abort at exit)
    finally:
        tdist.destroy_process_group()


def test_pruner_in_a_users_ddp_loop_agrees_across_ranks_and_with_one_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert all(got["checks"].values()), got["checks"]
    assert len((tmp_path / "pruning.jsonl").read_text().splitlines()) == 1  # rank 0 logs the event once

    # the kernel features are those of the first 6 samples of the global batch, in one process
    model = tiny_bert()
    model.load_state_dict(torch.load(tmp_path / "at_event.pt", weights_only=True))
    model.eval()
    batch = global_batch(EVENT)
    reference = compute_group_features(
        model,
        GroupSet(model, ("head",)).groups,
        lambda m, b: m.per_sample_loss(*b),
        (batch["input_ids"][:6], batch["labels"][:6]),
        chunk_size=1,
    )
    expected = torch.stack([reference.min_eigenvalue, reference.entropy])
    torch.testing.assert_close(got["features"], expected, rtol=1e-5, atol=1e-10)

    # the same loop in one process on the global batches: same mask, same gates and weights within float noise
    single_model = tiny_bert()
    single = user_loop(single_model, global_batch, None, None)
    assert single.distributed is False
    assert torch.equal(got["mask"], single.mask) and not bool(single.mask.all())
    torch.testing.assert_close(got["gates"], torch.tensor(single.records[0]["gates"]), rtol=1e-5, atol=1e-6)
    weights = torch.cat([p.detach().reshape(-1) for p in single_model.parameters()])
    torch.testing.assert_close(got["weights"], weights, rtol=1e-5, atol=1e-6)


class TokenTask:
    """A token-weighted loss (like MLM's): the mean of w·x² over the unmasked-out tokens of the batch."""

    name, steps_per_epoch = "tokens", 1

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
        keep = torch.rand(8, 5, generator=gen) < torch.linspace(0.1, 0.9, 8).unsqueeze(1)  # uneven counts
        keep[:, 0] = True
        return x, torch.where(keep, 1, -100)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, labels = batch
        return model.weight.sum() * (x[labels != -100] ** 2).mean()

    def loss_units(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int((batch[1] != -100).sum())


def test_sharded_losses_average_to_the_global_batch_loss() -> None:
    from plprune.distributed import ShardedTask, gather_samples, shard_task

    task, model = TokenTask(), torch.nn.Linear(1, 1, bias=False).double()
    whole = task.train_batch(3)
    model.zero_grad()
    task.loss(model, whole).backward()
    expected_grad = model.weight.grad.clone()
    losses, grads = [], []
    for rank in range(WORLD):
        shard = ShardedTask(task, rank, WORLD)
        batch = shard.train_batch(3)
        assert all(torch.equal(a, b[rank::WORLD]) for a, b in zip(batch, whole, strict=True))
        model.zero_grad()
        loss = shard.loss(model, batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(model.weight.grad.clone())
        unweighted = shard.loss(model, tuple(t.clone() for t in batch))  # not the batch it handed out
        assert float(unweighted.detach()) == pytest.approx(float(task.loss(model, batch).detach()))
    assert sum(losses) / WORLD == pytest.approx(float(task.loss(model, whole).detach()), rel=1e-12)
    torch.testing.assert_close(sum(grads) / WORLD, expected_grad)
    assert shard_task(task) is task  # one process: nothing to shard
    assert all(torch.equal(a, b[:3]) for a, b in zip(gather_samples(whole, 3), whole, strict=True))


def test_distributed_true_without_a_process_group_is_refused() -> None:
    model = tiny_bert()
    with pytest.raises(plprune.PlpruneError, match="distributed=True needs an initialised"):
        plprune.Pruner(
            model, plprune.scorers.Random(), plprune.OneShot(1, 0.5), kinds="head", distributed=True
        )
