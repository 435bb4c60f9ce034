"""Export and load: the reloaded compacted model computes what the compacted and the masked model did, the
ONNX file what PyTorch does, a run directory exports from the command line, and every damaged or mismatched
export fails with one clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import plprune
from plprune.cli import main
from plprune.compaction import compact
from plprune.errors import PlpruneError
from plprune.models import VGG, BertConfig, BertForMaskedLM, SwitchConfig, SwitchForMaskedLM
from tiny_models import tiny_hf_bert

VOCAB, SEQ = 30, 8


def _filters_compaction() -> bool:
    try:
        from plprune.compaction import filters  # noqa: F401  (registers the filter planner)
    except ImportError:
        return False
    return True


needs_filter_compaction = pytest.mark.skipif(
    not _filters_compaction(),
    reason="conv filter compaction (plprune.compaction.filters) has not landed yet",
)


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        ffn_size=32,
        max_length=SEQ,
        dropout=0.0,
        attention_dropout=0.0,
    )


def ids(n: int = 3, seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(input_ids=x) if hasattr(model, "bert") else model(x)
    return out if isinstance(out, Tensor) else out.logits


def pruned(model: nn.Module, kind: str, drop: list[int], example_inputs: object = None) -> plprune.GroupSet:
    groups = plprune.GroupSet(model, kinds=(kind,), example_inputs=example_inputs)
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[drop] = False
    groups.apply_mask(mask)
    return groups


def check_round_trip(model: nn.Module, groups: plprune.GroupSet, out: Path, x: Tensor) -> nn.Module:
    """Export, load; the loaded model equals the compacted one (1e-6) and the masked one (1e-5)."""
    model.eval()
    manifest = plprune.export(model, groups, out)
    loaded = plprune.load(out)
    compacted, _ = compact(groups)
    masked_out, compacted_out, loaded_out = logits(model, x), logits(compacted.eval(), x), logits(loaded, x)
    assert (loaded_out - compacted_out).abs().max() <= 1e-6
    assert (loaded_out - masked_out).abs().max() <= 1e-5
    assert not loaded.training
    assert sum(p.numel() for p in loaded.parameters()) == manifest["parameters"]["compacted"]
    assert manifest["parameters"]["compacted"] < manifest["parameters"]["dense"]
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plprune.json"]
    return loaded


def test_plprune_bert_heads_round_trip(tmp_path: Path) -> None:
    model = BertForMaskedLM(bert_config())
    groups = pruned(model, "head", [0, 5, 6])
    loaded = check_round_trip(model, groups, tmp_path / "bert", ids())
    assert [layer.attention.num_heads for layer in loaded.layers] == [3, 2]
    manifest = json.loads((tmp_path / "bert" / "plprune.json").read_text())
    assert manifest["architecture"]["family"] == "plprune.BertForMaskedLM"
    assert manifest["pruning"]["counts"]["head"] == {"before": 8, "after": 5, "per_layer": [3, 2]}
    assert manifest["pruning"]["groups"] == groups.names
    assert manifest["pruning"]["mask"] == groups.mask.tolist()


def test_hf_bert_heads_round_trip_restores_per_layer_head_counts(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = tiny_hf_bert(vocab=VOCAB, seq=SEQ)
    groups = pruned(model, "head", [1, 2, 4])
    loaded = check_round_trip(model, groups, tmp_path / "hf", ids())
    assert isinstance(loaded, transformers.BertForMaskedLM)
    heads = [layer.attention.self.num_attention_heads for layer in loaded.bert.encoder.layer]
    assert heads == [2, 3]
    assert loaded.config.num_attention_heads == 4  # the dense config: plprune.json holds the counts
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    x = ids()
    loss = loaded(input_ids=x, labels=x).loss  # a working transformers model (loss, backward)
    loss.backward()
    assert torch.isfinite(loss)
    manifest = json.loads((tmp_path / "hf" / "plprune.json").read_text())
    assert manifest["architecture"]["class"] == "BertForMaskedLM"
    assert manifest["pruning"]["counts"]["head"]["per_layer"] == [2, 3]
    assert manifest["weights"]["ties"]["cls.predictions.decoder.weight"] == (
        "bert.embeddings.word_embeddings.weight"
    )


def test_plprune_switch_experts_round_trip(tmp_path: Path) -> None:
    model = SwitchForMaskedLM(bert_config(), SwitchConfig(num_experts=4))
    groups = pruned(model, "expert", [0, 5, 7])
    loaded = check_round_trip(model, groups, tmp_path / "switch", ids())
    assert [len(layer.feed_forward.experts) for layer in loaded.layers] == [3, 2]
    assert [layer.feed_forward.num_experts for layer in loaded.layers] == [3, 2]
    copied, _ = compact(groups)  # neither a compacted copy nor the reloaded model keeps a gate hook
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in [*loaded.modules(), *copied.modules()])


def tiny_vgg() -> VGG:
    torch.manual_seed(0)
    model = VGG(width_multiplier=0.0625, in_channels=1, num_classes=10, dims=2)
    with torch.no_grad():  # non-trivial eval-mode statistics, so that a wrong channel would show
        for module in model.modules():
            if hasattr(module, "running_var"):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def vgg_inputs(n: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def onnx_outputs(path: Path, x: Tensor) -> Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@needs_filter_compaction
def test_vgg_filters_round_trip_and_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny_vgg()
    x = vgg_inputs()
    groups = pruned(model, "filter", [0, 1, 5, 20, 21, 40], example_inputs=x[:2])
    out = tmp_path / "vgg"
    manifest = plprune.export(model, groups, out, format="onnx")
    loaded = plprune.load(out)
    compacted, _ = compact(groups)
    assert (loaded(x) - compacted.eval()(x)).abs().max() <= 1e-6
    assert (loaded(x) - logits(model, x)).abs().max() <= 1e-5
    assert manifest["example_inputs"] == [{"shape": [2, 1, 8, 8], "dtype": "float32"}]
    assert manifest["pruning"]["counts"]["filter"]["after"] == len(groups) - 6
    assert manifest["onnx"]["max_abs_diff"] <= 1e-4
    assert (onnx_outputs(out / "model.onnx", x) - logits(model, x)).abs().max() <= 1e-4


def test_a_dense_model_exports_and_loads_unchanged(tmp_path: Path) -> None:
    model = tiny_vgg()
    x = vgg_inputs()
    manifest = plprune.export(model, None, tmp_path / "vgg", description="dense")
    assert manifest["pruning"] is None and manifest["description"] == "dense"
    assert manifest["architecture"] == {
        "family": "plprune.VGG",
        "args": {"width_multiplier": 0.0625, "in_channels": 1, "num_classes": 10, "dims": 2},
    }
    loaded = plprune.load(tmp_path / "vgg")
    assert (loaded(x) - model(x)).abs().max() == 0


# -- a plprune train run, from the command line --------------------------------------------------------
TRAIN = [
    "--task",
    "bert-wikitext2",
    "--seq-len",
    "16",
    "--layers",
    "2",
    "--hidden",
    "16",
    "--heads",
    "4",
    "--ffn",
    "32",
    "--batch-size",
    "4",
    "--steps",
    "8",
    "--eval-every",
    "8",
    "--eval-batches",
    "1",
    "--min-freq",
    "1",
    "--method",
    "random",
    "--prune-at",
    "4",
    "--prune-ratio",
    "0.5",
    "--no-diagnostics",
    "--no-progress",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = int(exit_.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def run_dir(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data-dir", tiny_wikitext_dir, "--out", out, *TRAIN)
    assert code == 0, err
    return out


def test_cli_exports_a_run_that_loads_and_matches_its_onnx_file(capsys, run_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from plprune.run_export import model_from_run

    code, stdout, err = run_cli(capsys, "export", run_dir, "--format", "onnx")
    assert code == 0, err
    out = run_dir / "export"
    assert "final mask of pruning event 1 (step 4)" in stdout and "heads: 8 -> 4" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.safetensors", "plprune.json"]
    loaded = plprune.load(out)
    masked, _, _, _ = model_from_run(run_dir)
    event = json.loads((run_dir / "pruning.jsonl").read_text().splitlines()[-1])
    manifest = json.loads((out / "plprune.json").read_text())
    assert manifest["pruning"]["mask"] == event["mask"] and manifest["pruning"]["groups"] == event["groups"]
    assert sum(layer.attention.num_heads for layer in loaded.layers) == 4
    vocab = loaded.config.vocab_size
    x = torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(2))
    assert (logits(loaded, x) - logits(masked, x)).abs().max() <= 1e-5
    assert manifest["onnx"]["max_abs_diff"] <= 1e-4
    assert (onnx_outputs(out / "model.onnx", x) - logits(loaded, x)).abs().max() <= 1e-4


def test_cli_refuses_an_existing_out_without_force_and_replaces_it_with(capsys, run_dir: Path) -> None:
    out = run_dir / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", run_dir)
    assert code == 2 and err.startswith("plprune: error:") and "already exists" in err and "--force" in err
    assert "Traceback" not in err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, "export", run_dir, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plprune.json"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]  # no temporary left over
    plprune.load(out)


def test_a_run_without_pruning_events_exports_its_dense_model(capsys, run_dir: Path, tmp_path: Path) -> None:
    dense_run = tmp_path / "dense-run"
    shutil.copytree(run_dir, dense_run)
    (dense_run / "pruning.jsonl").unlink()
    code, stdout, err = run_cli(capsys, "export", dense_run, "--out", tmp_path / "dense")
    assert code == 0, err
    assert "no pruning events in pruning.jsonl: the dense model is exported" in stdout
    loaded = plprune.load(tmp_path / "dense")
    assert [layer.attention.num_heads for layer in loaded.layers] == [4, 4]
    assert json.loads((tmp_path / "dense" / "plprune.json").read_text())["pruning"] is None


def test_a_damaged_latest_checkpoint_exports_the_previous_one(
    capsys, tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    """checkpoint.pt fails its checksum: export falls back to checkpoint.prev.pt and says so; with both
    damaged it refuses, naming each problem."""
    from plprune.run_export import model_from_run

    run_dir = tmp_path / "run"
    args = ("train", "--data-dir", tiny_wikitext_dir, "--out", run_dir, *TRAIN, "--checkpoint-every", "3")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    latest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    assert previous.is_file()  # checkpoints at steps 3, 6 and the final 8 (pruned at 4)
    reference, _, _, _ = model_from_run(run_dir)
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    code, stdout, err = run_cli(capsys, "export", run_dir, "--out", tmp_path / "from-prev")
    assert code == 0, err
    assert "from checkpoint.prev.pt, step 6: the newer checkpoint is unusable" in stdout
    assert "does not match" in stdout or "checksum" in stdout
    rebuilt, _, _, _ = model_from_run(run_dir)
    pairs = zip(rebuilt.parameters(), reference.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)  # the step-6 weights, not the final ones
    previous.write_bytes(previous.read_bytes()[:100])
    code, _, err = run_cli(capsys, "export", run_dir, "--out", tmp_path / "none")
    assert code == 2 and "no usable checkpoint" in err and "Traceback" not in err


def test_cli_names_a_directory_that_is_not_a_run(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "export", tmp_path)
    assert code == 2 and "not a plprune run directory" in err and "Traceback" not in err


# -- damaged or mismatched exports ---------------------------------------------------------------------
@pytest.fixture
def exported(tmp_path: Path) -> Path:
    model = BertForMaskedLM(bert_config())
    plprune.export(model, pruned(model, "head", [0, 5]), tmp_path / "export")
    return tmp_path / "export"


def test_truncated_weights_are_refused(exported: Path) -> None:
    weights = exported / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PlpruneError, match=r"is truncated: \d+ bytes, plprune\.json records \d+"):
        plprune.load(exported)


def test_tampered_weights_are_refused(exported: Path) -> None:
    weights = exported / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(PlpruneError, match=r"does not match the sha256 recorded in plprune\.json"):
        plprune.load(exported)


def test_a_manifest_that_does_not_match_the_weights_names_the_tensor(exported: Path) -> None:
    manifest_path = exported / "plprune.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["architecture"]["bert_config"]["ffn_size"] = 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PlpruneError) as error:
        plprune.load(exported)
    assert "tensor layers.0.feed_forward.intermediate.weight" in str(error.value)
    assert "(64, 16)" in str(error.value) and "(32, 16)" in str(error.value)


def test_bad_export_arguments_and_directories(exported: Path, tmp_path: Path) -> None:
    model = BertForMaskedLM(bert_config())
    with pytest.raises(PlpruneError, match="already exists; pass force=True"):
        plprune.export(model, None, exported)
    with pytest.raises(PlpruneError, match=r"unknown format 'pickle'; valid: safetensors, onnx"):
        plprune.export(model, None, tmp_path / "x", format="pickle")
    other = BertForMaskedLM(bert_config())
    with pytest.raises(PlpruneError, match="belongs to another model"):
        plprune.export(model, pruned(other, "head", [0]), tmp_path / "y")
    with pytest.raises(PlpruneError, match="not a plprune export"):
        plprune.load(tmp_path)
    (exported / "model.safetensors").unlink()
    with pytest.raises(PlpruneError, match="is missing"):
        plprune.load(exported)


def test_moe_onnx_tracing_refuses_an_example_that_leaves_an_expert_out() -> None:
    """The Switch family's trace check, reached through the registry export calls before tracing."""
    from plprune.models.architecture import check_trace_inputs

    model = SwitchForMaskedLM(bert_config(), SwitchConfig(num_experts=4)).eval()
    check_trace_inputs(model, (ids(8),))  # 64 tokens reach every expert
    with pytest.raises(PlpruneError, match=r"send no token to experts \[.*\] of layers\.0\.feed_forward"):
        check_trace_inputs(model, (ids(1)[:, :1],))  # one token reaches one expert per layer


def test_export_takes_a_pruner_before_and_after_its_in_place_compaction(tmp_path: Path) -> None:
    model = BertForMaskedLM(bert_config()).eval()
    pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, 0.5), kinds=("head",))
    pruner.step(0)
    x = ids()
    masked = logits(model, x)
    plprune.export(model, pruner, tmp_path / "masked")
    pruner.compact()
    manifest = plprune.export(model, pruner, tmp_path / "compacted")
    assert manifest["parameters"]["dense"] is None  # saved as it was, already compacted
    for name in ("masked", "compacted"):
        loaded = plprune.load(tmp_path / name)
        assert sum(layer.attention.num_heads for layer in loaded.layers) == 4
        assert (logits(loaded, x) - masked).abs().max() <= 1e-5


# -- the family registry (plprune.models.architecture) -------------------------------------------------
class TwoLayerNet(nn.Module):
    """A user's family: an MLP whose hidden width is a constructor argument (no heads, experts or filters)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def test_a_registered_family_loads_without_a_skeleton(tmp_path: Path) -> None:
    """One ``register_architecture`` call makes a user's model rebuildable from ``plprune.json``: the
    reloaded model computes what the exported one does, and its default example input is the family's."""
    from plprune.models.architecture import register_architecture

    register_architecture(
        TwoLayerNet,
        "tests.TwoLayerNet",
        describe=lambda model: {"width": model.width},
        build=lambda description: TwoLayerNet(description["width"]),
        example_inputs=lambda description: (torch.zeros(2, 4),),
    )
    torch.manual_seed(0)
    model = TwoLayerNet(5).eval()
    manifest = plprune.export(model, None, tmp_path / "net")
    assert manifest["architecture"] == {"family": "tests.TwoLayerNet", "width": 5}
    assert manifest["example_inputs"] == [{"shape": [2, 4], "dtype": "float32"}]
    loaded = plprune.load(tmp_path / "net")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert isinstance(loaded, TwoLayerNet) and torch.equal(loaded(x), model(x))


def test_the_family_registry_refuses_bad_registrations_and_unknown_families(tmp_path: Path) -> None:
    from plprune.models.architecture import build_architecture, describe_architecture, register_architecture

    def build(description: dict) -> nn.Module:
        return nn.Linear(1, 1)

    with pytest.raises(PlpruneError, match=r"needs an nn\.Module subclass"):
        register_architecture(int, "tests.int", describe=dict, build=build)  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match="'transformers' is reserved"):
        register_architecture(nn.Linear, "transformers", describe=dict, build=build)
    with pytest.raises(PlpruneError, match="build must be callable"):
        register_architecture(nn.Linear, "tests.Linear", describe=dict, build="nope")  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match=r"already registered for plprune\.models\.bert\.BertForMaskedLM"):
        register_architecture(nn.Linear, "plprune.BertForMaskedLM", describe=dict, build=build)
    with pytest.raises(PlpruneError, match=r"unknown model family 'nobody\.Net'"):
        build_architecture({"family": "nobody.Net"})
    with pytest.raises(PlpruneError, match=r"invalid plprune.VGG architecture description \('args'\)"):
        build_architecture({"family": "plprune.VGG"})
    with pytest.raises(PlpruneError, match="pass its dense, unpruned skeleton"):
        build_architecture(describe_architecture(nn.Linear(2, 2)))
    custom = {"family": "custom", "class": "torch.nn.modules.linear.Linear"}
    assert describe_architecture(nn.Linear(2, 2)) == custom


def test_run_directory_reading_moved_out_of_export() -> None:
    """``plprune.export`` is the file format only; the run-directory reader says where it went."""
    import importlib

    from plprune.run_export import export_run, model_from_run

    module = importlib.import_module("plprune.export")  # plprune.export is also the function's name
    assert callable(export_run) and callable(model_from_run)
    with pytest.raises(AttributeError, match=r"moved to plprune\.run_export\.model_from_run"):
        module.model_from_run  # noqa: B018


def test_kinds_that_need_example_inputs_come_from_the_kind_registry() -> None:
    """Export, load, the Pruner and the runner ask this instead of testing for ``"filter"``."""
    from plprune.sites import kinds_need_inputs

    assert kinds_need_inputs(("filter",)) and kinds_need_inputs(("head", "filter"))
    assert kinds_need_inputs(None)  # the default kinds include filters
    assert not kinds_need_inputs(("head",)) and not kinds_need_inputs(("head", "expert", "neuron"))


def test_a_flap_run_on_a_llama_exports_with_its_created_biases(
    capsys, tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    """FLAP's bias compensation gives Llama's bias-free o_proj a bias during the run; the run's checkpoint
    holds it, so export rebuilds it (from pruning.jsonl) before loading, and the exported model computes
    what the run's masked model computes."""
    from plprune.run_export import model_from_run

    out = tmp_path / "flap"
    argv = ["train", "--data-dir", tiny_wikitext_dir, "--out", out, *TRAIN]
    argv[argv.index("bert-wikitext2")] = "hf-llama-wikitext2"  # a GQA decoder: 4 query / 2 KV heads
    argv[argv.index("random")] = "flap"
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    event = json.loads((out / "pruning.jsonl").read_text().splitlines()[-1])
    assert event["flap_created_biases"], "FLAP must have created o_proj biases on a Llama"
    code, _, err = run_cli(capsys, "export", out)
    assert code == 0, err
    masked, _, _, _ = model_from_run(out)
    for name in event["flap_created_biases"]:
        assert masked.get_submodule(name).bias.abs().sum() > 0  # the compensation, loaded from the checkpoint
    loaded = plprune.load(out / "export")
    x = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    assert (logits(loaded, x) - logits(masked, x)).abs().max() <= 1e-5
