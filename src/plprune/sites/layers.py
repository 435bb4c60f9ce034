"""Whole transformer blocks ("layer" groups, depth pruning), gated by a hook that makes a block the identity.

A transformer is a stack of residual blocks ``x_{i+1} = B_i(x_i)`` kept in one ``nn.ModuleList`` (Hugging
Face: ``model.layers`` of Llama-family decoders, ``encoder.layer`` of BERT, ``transformer.h`` of GPT-2,
``decoder.layers`` of OPT/BART; plprune's BERT and Switch: ``layers``). Depth pruning (ShortGPT, Men et al.
2024; Gromov et al. 2024) removes whole blocks: a removed block passes its input on, ``x_{i+1} = x_i``.

* **Group**: block i of a block list. Its slices are every parameter of the block (whole, along dim 0), so
  a pruned block's weights are held at zero like any pruned group's, and magnitude scores the block's norm.
* **Site**: one block list (:class:`LayerSite`; ``layer`` = the list's number, so the protection unit is the
  list: a list never loses its last block; an encoder-decoder has two lists).
* **Gate**: a forward hook on every block replaces its output hidden state ``y = B_i(x)`` by
  ``g·y + (1 − g)·x`` (the soft gate of the gating network, paper Eq. 6 ``g ⊙ w`` applied to the block's
  residual update ``y − x``); a block whose hard mask is off returns ``x`` itself, exactly; a gate of 1
  without grad leaves the output untouched. Tuple outputs keep their other members (attention weights, T5's
  position bias). The block still runs (its key/value cache is filled as before): compaction brings the
  speed-up.
* **Discovery** (structural, no class import): every outermost ``nn.ModuleList`` whose children are all of
  one class and each contain an attention module (a module a head adapter matches, or whose class name says
  "Attention") is a block list; :func:`register_layers` names others (e.g. attention-free stacks).

The kind is found only when asked for (``kinds=("layer",)``, with heads and neurons if wanted), never by
``kinds=None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.groups import GateSite, Group, ParamSlice
from plprune.sites.heads import find_head_sites


@dataclass(frozen=True)
class LayerAdapter:
    """A block list that structural discovery does not find: in a module that ``matches``, the
    ``nn.ModuleList`` at the submodule path ``blocks`` holds the residual blocks (each maps a hidden state
    to one of the same shape, as its first argument and its output, or the first member of a tuple)."""

    name: str
    matches: Callable[[nn.Module], bool]
    blocks: str

    def __post_init__(self) -> None:
        if not callable(self.matches):
            raise PlpruneError(f"layer adapter {self.name!r}: matches must be callable")
        if not isinstance(self.blocks, str) or not self.blocks:
            raise PlpruneError(f"layer adapter {self.name!r}: blocks must be a submodule path, e.g. 'layers'")


_LAYER_ADAPTERS: list[LayerAdapter] = []


def register_layers(adapter: LayerAdapter) -> LayerAdapter:
    """Make ``adapter`` known to layer discovery (later registrations are tried first)."""
    if not isinstance(adapter, LayerAdapter):
        raise PlpruneError(f"register_layers takes a LayerAdapter, got {type(adapter).__name__}")
    _LAYER_ADAPTERS[:] = [a for a in _LAYER_ADAPTERS if a.name != adapter.name]
    _LAYER_ADAPTERS.insert(0, adapter)
    return adapter


def unregister_layers(name: str) -> None:
    """Forget the layer adapter called ``name`` (no error if there is none)."""
    _LAYER_ADAPTERS[:] = [a for a in _LAYER_ADAPTERS if a.name != name]


def block_hidden_states(
    args: tuple, kwargs: dict[str, Any], output: Any, block: str
) -> tuple[Tensor, Tensor]:
    """A block's input and output hidden states, as a forward hook with kwargs sees them: the input is the
    first positional argument (else ``hidden_states=``), the output is the output or its first member.
    Raises unless both are tensors of one shape (a residual block); ``block`` names it in the message."""
    x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("hidden_states")
    y = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise PlpruneError(
            f"block {block} takes no hidden-state tensor as its first argument or returns none as its output "
            "(or its first member): a layer group must be a residual block x -> y of one shape"
        )
    if x.shape != y.shape:
        raise PlpruneError(
            f"block {block} maps hidden states of shape {tuple(x.shape)} to {tuple(y.shape)}: not a residual "
            "block, so it cannot be made the identity"
        )
    return x, y


class LayerSite(GateSite):
    """The blocks of one block list (``module``: the ``nn.ModuleList``), each gated by a forward hook."""

    def __init__(self, module_name: str, module: nn.ModuleList, layer: int) -> None:
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            raise PlpruneError(f"a layer site is a non-empty nn.ModuleList of blocks, got {module_name!r}")
        super().__init__(module_name, module, "layer", layer, len(module))
        self._fixed: list[float] | None = None

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.module)

    def block_name(self, index: int) -> str:
        return f"{self.module_name}.{index}" if self.module_name else str(index)

    def groups(self) -> list[Group]:
        out = []
        for i, block in enumerate(self.module):
            slices = tuple(
                ParamSlice(f"{self.block_name(i)}.{name}", 0, 0, int(param.shape[0]))
                for name, param in block.named_parameters()
                if param.dim() > 0
            )
            out.append(Group("layer", self.layer, i, slices))
        return out

    def set_gate(self, gate: Tensor | None) -> None:
        super().set_gate(gate)
        # gates that need no gradient (the hard mask's 0/1), read once here instead of at every forward
        self._fixed = None if gate is None or gate.requires_grad else gate.detach().cpu().tolist()

    def removed_modules(self, keep: Tensor) -> list[str]:
        return [self.block_name(i) for i, kept in enumerate(keep.tolist()) if not kept]

    def _gate_block(self, index: int, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        gate = self.gate
        if gate is None:
            return None
        removed = self.keep is not None and not bool(self.keep[index])
        if not removed and self._fixed is not None and self._fixed[index] == 1.0:
            return None  # a kept block under the hard mask: untouched, bit for bit
        x, y = block_hidden_states(args, kwargs, output, self.block_name(index))
        if removed:
            new = x
        else:
            g = gate[index].to(y.device, y.dtype)
            new = g * y + (1 - g) * x
        if isinstance(output, tuple):
            return (new, *output[1:])
        if isinstance(output, list):
            return [new, *output[1:]]
        return new

    def _register_hooks(self) -> list[RemovableHandle]:
        handles = []
        for i, block in enumerate(self.module):

            def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, index: int = i) -> Any:
                return self._gate_block(index, args, kwargs, output)

            handles.append(block.register_forward_hook(hook, with_kwargs=True))
        return handles


def _attention_modules(model: nn.Module) -> list[str]:
    """Names of the model's attention modules: those a head adapter matches, and any module whose class
    name contains "Attention" (a family without a head adapter still has findable blocks)."""
    heads, _ = find_head_sites(model)
    names = {site.module_name for site in heads}
    for name, module in model.named_modules():
        if "attention" in type(module).__name__.lower() and not isinstance(module, nn.Dropout):
            names.add(name)
    return sorted(names)


def _is_block_list(name: str, module: nn.Module, attention: list[str]) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    if len({type(child) for child in module}) != 1:
        return False
    prefix = f"{name}." if name else ""
    return all(any(a.startswith(f"{prefix}{i}.") for a in attention) for i in range(len(module)))


def find_layer_sites(model: nn.Module) -> list[LayerSite]:
    """Layer sites of ``model`` in module order: the block lists of registered adapters, then every
    outermost structurally found one (a list inside another list's block is not a block list of its own)."""
    lists: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        adapter = next((a for a in _LAYER_ADAPTERS if a.matches(module)), None)
        if adapter is None:
            continue
        try:
            blocks = module.get_submodule(adapter.blocks)
        except AttributeError as error:
            raise PlpruneError(
                f"layer adapter {adapter.name!r} matches {name or 'the model'}, which has no submodule "
                f"{adapter.blocks!r}"
            ) from error
        if not isinstance(blocks, nn.ModuleList):
            raise PlpruneError(
                f"layer adapter {adapter.name!r}: {adapter.blocks!r} of {name or 'the model'} is a "
                f"{type(blocks).__name__}, not an nn.ModuleList of blocks"
            )
        lists[f"{name}.{adapter.blocks}" if name else adapter.blocks] = blocks
    attention = _attention_modules(model)
    for name, module in model.named_modules():
        if name not in lists and _is_block_list(name, module, attention):
            lists[name] = module
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    names = sorted(lists, key=lambda n: order.get(n, len(order)))
    outermost = [n for n in names if not any(n.startswith(f"{outer}.") for outer in names if outer != n)]
    return [LayerSite(name, lists[name], i) for i, name in enumerate(outermost)]


def layer_sites(model: nn.Module, example_inputs: Any = None) -> list[GateSite]:
    """The ``"layer"`` finder of :func:`plprune.sites.find_sites`: every block list's site, or one clear error
    saying what was looked for and how to name a block list."""
    sites = find_layer_sites(model)
    if not sites:
        raise PlpruneError(
            f"{type(model).__name__} has no block list plprune can find (looked for an nn.ModuleList whose "
            "children are all of one class and each contain an attention module); to prune whole layers, "
            "name it: plprune.register_layers(plprune.LayerAdapter(name=..., matches=lambda m: "
            "isinstance(m, YourModel), blocks='layers')) (docs/byom.md)"
        )
    return list(sites)
