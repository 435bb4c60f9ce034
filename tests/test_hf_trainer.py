"""``plprune.HFPruningCallback``: pruning inside a Hugging Face ``Trainer`` with one line, and resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import plprune
from tiny_models import tiny_hf_bert

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

VOCAB, SEQ = 30, 8


class Blocks(torch.utils.data.Dataset):
    """Fixed MLM examples (ids, labels with -100 where not masked)."""

    def __init__(self, n: int = 32) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
        masked = torch.rand(n, SEQ, generator=gen) < 0.3
        masked[:, 0] = True
        self.labels = torch.where(masked, self.ids, torch.full_like(self.ids, -100))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def build(output_dir: Path, max_steps: int = 8) -> tuple[transformers.Trainer, plprune.Pruner]:
    model = tiny_hf_bert(VOCAB, SEQ)
    data = Blocks()
    pruner = plprune.Pruner(model, plprune.scorers.Magnitude(), plprune.OneShot(3, 0.5), kinds="head")
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_steps=4,
        logging_steps=4,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, callbacks=[plprune.HFPruningCallback(pruner)]
    )
    return trainer, pruner


def pruned_weights_are_zero(pruner: plprune.Pruner) -> bool:
    params = dict(pruner.model.named_parameters())
    for index in (~pruner.mask).nonzero().flatten().tolist():
        for piece in pruner.groups.groups[index].slices:
            if torch.count_nonzero(piece.select(params[piece.param_name])):
                return False
    return True


def test_trainer_prunes_with_one_callback_and_resumes_the_mask(tmp_path: Path) -> None:
    trainer, pruner = build(tmp_path / "run")
    trainer.train()
    assert pruner.events_done == 1 and pruner.pruned_ratio("head") == 0.5
    assert pruned_weights_are_zero(pruner)
    assert (tmp_path / "run" / "checkpoint-4" / "plprune_pruner.pt").is_file()

    resumed_trainer, resumed = build(tmp_path / "run")  # a new process would build the same objects
    state = torch.load(tmp_path / "run" / "checkpoint-4" / "plprune_pruner.pt", weights_only=True)
    resumed_trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert state["events_done"] == 1 and resumed.events_done == 1  # not pruned a second time
    assert torch.equal(resumed.mask, pruner.mask) and pruned_weights_are_zero(resumed)


def test_missing_pruner_state_on_resume_is_a_clear_error(tmp_path: Path) -> None:
    trainer, _ = build(tmp_path / "run")
    trainer.train()
    (tmp_path / "run" / "checkpoint-4" / "plprune_pruner.pt").unlink()
    resumed_trainer, _ = build(tmp_path / "run")
    with pytest.raises(plprune.PlpruneError, match=r"plprune_pruner\.pt is missing"):
        resumed_trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))


def test_a_damaged_pruner_state_is_refused_naming_the_earlier_intact_checkpoint(tmp_path: Path) -> None:
    trainer, _ = build(tmp_path / "run")
    trainer.train()
    saved = tmp_path / "run" / "checkpoint-8" / "plprune_pruner.pt"
    assert (tmp_path / "run" / "checkpoint-8" / "plprune_pruner.pt.sha256").is_file()
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the file still loads, but no longer matches its sha256
    saved.write_bytes(bytes(data))
    resumed_trainer, _ = build(tmp_path / "run")
    with pytest.raises(plprune.PlpruneError, match=r"does not match its checksum.*checkpoint-4"):
        resumed_trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-8"))
