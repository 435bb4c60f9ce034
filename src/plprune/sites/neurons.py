"""Feed-forward neurons of any model: the intermediate channels of each FFN block, gated by a pre-hook.

An FFN block computes ``W_out · φ(W_in x)`` (or, gated, ``W_out · (φ(W_gate x) ⊙ W_up x)``). Its
intermediate channel c — one "neuron", the structured unit of width pruning in the FFN (e.g. Michel et al.
2019's and Kwon et al. 2022's "neurons"/"filters" of BERT's FFN; LLM-Pruner's channel groups) — is the group:

* row c of each input projection's weight and bias (two projections for a gated MLP: ``gate_proj`` and
  ``up_proj``; T5's ``wi_0`` and ``wi_1``), or rows c and I + c of a *fused* projection whose output is
  ``[gate; up]`` (Phi-3's ``gate_up_proj``, split by ``chunk(2, dim=-1)``: gate first);
* column c of the output projection's weight (its bias belongs to no channel and stays).

Projections are ``nn.Linear`` (and subclasses, e.g. Falcon's ``FalconLinear``) or Hugging Face's GPT-2
``Conv1D`` (weight stored ``[in, out]``, attribute ``nf``: there channel c is *column* c of the input
projection and *row* c of the output projection), recognised by structure, without importing transformers.

Gate: a forward *pre*-hook on the output projection multiplies channel c of its input by ``g_c`` — as
:class:`~plprune.sites.heads.HeadSite` gates the context before W_O (paper Eq. 6 ``g ⊙ w``). A pruned neuron
(its rows and column zero, gate 0) contributes nothing, whatever φ(0) is.

One site = one FFN block = one protection layer (a block never loses its last neuron). In plprune's Switch
every expert's FFN is a block of its own: one site per expert, so every expert keeps at least one neuron.

Adding a family is one call::

    plprune.register_ffn(plprune.FFNAdapter(
        name="my-mlp",
        matches=lambda m: isinstance(m, MyMLP),
        inputs=("w1",),              # or ("w_gate", "w_up") for a gated MLP; ("w13",) with fused=True
        output="w2",
    ))

Built-in adapters (all matched by attribute names and module types, never by class import): plprune's BERT
``FeedForward`` and Switch ``ExpertFeedForward`` (``intermediate`` → ``output``); the Hugging Face BERT
family's layers (``intermediate.dense`` → ``output.dense``: RoBERTa, ELECTRA, ...), DistilBERT
(``lin1``/``lin2``), GPT-2 (``c_fc``/``c_proj``, Conv1D), OPT/BART/Whisper layers and ViT's MLP
(``fc1``/``fc2``), Llama/Qwen2/Mistral/Gemma (``gate_proj``, ``up_proj`` → ``down_proj``), Phi-3
(``gate_up_proj`` → ``down_proj``), T5 and SwitchTransformers (``wi`` → ``wo``; gated ``wi_0``, ``wi_1`` →
``wo``), GPT-NeoX and Falcon (``dense_h_to_4h`` → ``dense_4h_to_h``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.groups import GateSite, Group, ParamSlice
from plprune.sites.projections import (
    in_dim,
    in_features,
    is_projection,
    out_dim,
    out_features,
    projection_at,
)

#: count attributes an FFN module may keep of its intermediate width (updated after compaction when equal)
SIZE_ATTRIBUTES = ("intermediate_size", "ffn_size", "ffn_dim", "d_ff", "hidden_dim")


@dataclass(frozen=True)
class FFNAdapter:
    """How to read one FFN family: the projections' submodule paths, relative to the matched module.

    ``inputs``: one path (``c_fc``, ``fc1``, ``wi``, ``intermediate.dense``, ...) or two for a gated MLP
    (``gate_proj``, ``up_proj``), each producing the I intermediate channels; with ``fused=True`` exactly one
    path whose 2·I outputs are ``[gate; up]`` halves (channel c = outputs c and I + c). ``output``: the
    projection reading the I channels (``down_proj``, ``c_proj``, ``fc2``, ``wo``, ``output.dense``, ...).
    ``set_size(module, n)`` (optional) records the new width after compaction; without it, compaction sets
    the module's own count attribute (:data:`SIZE_ATTRIBUTES`, e.g. ``LlamaMLP.intermediate_size``) where it
    has one equal to the old width.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    inputs: tuple[str, ...]
    output: str
    fused: bool = False
    set_size: Callable[[nn.Module, int], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            object.__setattr__(self, "inputs", (self.inputs,))
        if not self.inputs or not all(isinstance(p, str) and p for p in self.inputs):
            raise PlpruneError(f"FFN adapter {self.name!r}: inputs must be one or more submodule paths")
        if self.fused and len(self.inputs) != 1:
            raise PlpruneError(
                f"FFN adapter {self.name!r}: a fused [gate; up] projection is one path, got {self.inputs}"
            )
        if not callable(self.matches):
            raise PlpruneError(f"FFN adapter {self.name!r}: matches must be callable")

    def shapes_fit(self, module: nn.Module) -> bool:
        """Whether ``module`` has these projections and their widths agree (a structural match)."""
        try:
            found = [module.get_submodule(p) for p in (*self.inputs, self.output)]
        except AttributeError:
            return False
        if not all(is_projection(m) for m in found):
            return False
        width = in_features(found[-1])
        factor = 2 if self.fused else 1
        return all(out_features(m) == factor * width for m in found[:-1])


_FFN_ADAPTERS: list[FFNAdapter] = []


def register_ffn(adapter: FFNAdapter) -> FFNAdapter:
    """Make ``adapter`` known to neuron discovery (later registrations are tried first)."""
    if not isinstance(adapter, FFNAdapter):
        raise PlpruneError(f"register_ffn takes an FFNAdapter, got {type(adapter).__name__}")
    _FFN_ADAPTERS[:] = [a for a in _FFN_ADAPTERS if a.name != adapter.name]
    _FFN_ADAPTERS.insert(0, adapter)
    return adapter


def unregister_ffn(name: str) -> None:
    """Forget the adapter called ``name`` (no error if there is none)."""
    _FFN_ADAPTERS[:] = [a for a in _FFN_ADAPTERS if a.name != name]


def ffn_adapters() -> list[FFNAdapter]:
    return list(_FFN_ADAPTERS)


class NeuronSite(GateSite):
    """The intermediate channels of one FFN block, gated by a pre-hook on its output projection."""

    def __init__(self, module_name: str, module: nn.Module, layer: int, adapter: FFNAdapter) -> None:
        who = f"FFN adapter {adapter.name!r}"
        inputs = [projection_at(module, p, who, module_name) for p in adapter.inputs]
        output = projection_at(module, adapter.output, who, module_name)
        width = in_features(output)
        factor = 2 if adapter.fused else 1
        for path, proj in zip(adapter.inputs, inputs, strict=True):
            if out_features(proj) != factor * width:
                raise PlpruneError(
                    f"{module_name}.{path} has {out_features(proj)} outputs but the output projection "
                    f"{adapter.output} reads {width}"
                    + (" (a fused [gate; up] projection needs 2x)" if factor > 1 else "")
                )
        super().__init__(module_name, module, "neuron", layer, width)
        self.adapter = adapter
        self.inputs = inputs
        self.output = output

    def _param(self, path: str, kind: str) -> str:
        prefix = f"{self.module_name}." if self.module_name else ""
        return f"{prefix}{path}.{kind}"

    def input_rows(self, channels: list[int]) -> list[int]:
        """The input projections' output indices of ``channels`` (both halves of a fused projection)."""
        if self.adapter.fused:
            return [*channels, *(self.num_groups + c for c in channels)]
        return list(channels)

    def groups(self) -> list[Group]:
        out = []
        for c in range(self.num_groups):
            slices = []
            for path, proj in zip(self.adapter.inputs, self.inputs, strict=True):
                for row in self.input_rows([c]):
                    slices.append(ParamSlice(self._param(path, "weight"), out_dim(proj), row, row + 1))
                    if proj.bias is not None:
                        slices.append(ParamSlice(self._param(path, "bias"), 0, row, row + 1))
            slices.append(
                ParamSlice(self._param(self.adapter.output, "weight"), in_dim(self.output), c, c + 1)
            )
            out.append(Group("neuron", self.layer, c, tuple(slices)))
        return out

    def _gate_channels(self, module: nn.Module, args: tuple) -> tuple | None:
        gate = self.gate
        if gate is None:
            return None
        hidden: Tensor = args[0]
        return (hidden * gate.to(hidden.device, hidden.dtype), *args[1:])

    def _register_hooks(self) -> list[RemovableHandle]:
        return [self.output.register_forward_pre_hook(self._gate_channels)]


def find_neuron_sites(model: nn.Module) -> list[NeuronSite]:
    """Neuron sites of ``model`` in module order (a matched module's submodules are not searched)."""
    sites: list[NeuronSite] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside):
            continue
        adapter = next((a for a in _FFN_ADAPTERS if a.matches(module)), None)
        if adapter is not None:
            sites.append(NeuronSite(name, module, len(sites), adapter))
            inside.append(name)
    return sites


def neuron_sites(model: nn.Module, example_inputs: Any = None) -> list[GateSite]:
    """The ``"neuron"`` finder of :func:`plprune.sites.find_sites`: every FFN block's site, or one clear
    error naming the known families and how to register another."""
    sites = find_neuron_sites(model)
    if not sites:
        known = ", ".join(a.name for a in reversed(_FFN_ADAPTERS))
        raise PlpruneError(
            f"{type(model).__name__} has no feed-forward block plprune can find (looked for the "
            f"projection pairs of the known FFN families: {known}); to prune neurons, register an adapter "
            "that names its projections: plprune.register_ffn(plprune.FFNAdapter(name=..., "
            "matches=lambda m: isinstance(m, YourMLP), inputs=('w1',), output='w2')) (docs/byom.md)"
        )
    return list(sites)


# -- the built-in adapters: matched by structure --------------------------------------------------------
def _structural(
    *inputs: str, output: str, fused: bool = False, extra: Callable[[nn.Module], bool] | None = None
) -> Callable[[nn.Module], bool]:
    """``matches``: the module has these projections and their widths agree (and ``extra`` holds)."""
    probe = FFNAdapter(name="probe", matches=lambda m: False, inputs=inputs, output=output, fused=fused)

    def matches(module: nn.Module) -> bool:
        return probe.shapes_fit(module) and (extra is None or extra(module))

    return matches


def _plain_ffn(module: nn.Module) -> bool:
    """plprune's ``FeedForward``/``ExpertFeedForward``: ``intermediate`` and ``output`` are the Linears
    themselves (its attention has ``output`` but no ``intermediate``)."""
    return isinstance(getattr(module, "intermediate", None), nn.Linear)


_BUILTIN = (
    # (name, inputs, output, fused)
    ("plprune-ffn", ("intermediate",), "output", False),
    ("hf-bert-layer", ("intermediate.dense",), "output.dense", False),
    ("hf-distilbert", ("lin1",), "lin2", False),
    ("hf-gpt2", ("c_fc",), "c_proj", False),
    ("hf-fc1-fc2", ("fc1",), "fc2", False),
    ("hf-gated", ("gate_proj", "up_proj"), "down_proj", False),
    ("hf-fused-gate-up", ("gate_up_proj",), "down_proj", True),
    ("hf-t5", ("wi",), "wo", False),
    ("hf-t5-gated", ("wi_0", "wi_1"), "wo", False),
    ("hf-h-to-4h", ("dense_h_to_4h",), "dense_4h_to_h", False),
)

for _name, _inputs, _output, _fused in reversed(_BUILTIN):  # registered last = tried first: table order
    register_ffn(
        FFNAdapter(
            name=_name,
            matches=_structural(
                *_inputs, output=_output, fused=_fused, extra=_plain_ffn if _name == "plprune-ffn" else None
            ),
            inputs=_inputs,
            output=_output,
            fused=_fused,
        )
    )
