"""Attention heads of any model, found through one small adapter per attention family.

An :class:`AttentionAdapter` names, relative to an attention module, its Q/K/V/O projections (``nn.Linear``)
and how many heads it has. Head h of that module is the group (paper Sec. 3.2.1): rows
``[h·d, (h+1)·d)`` of W_Q, W_K, W_V (and their biases), columns ``[h·d, (h+1)·d)`` of W_O. Its gate is
applied by a forward *pre*-hook on W_O that multiplies head h's slice of the concatenated context by
``g_h`` — exactly the "gate on each head's context before the output projection" of paper Eq. 6, with no
cooperation from the model. A pruned head (all its weights zero, gate 0) contributes nothing.

Adding a family (e.g. your own attention module) is one call::

    plprune.register_attention(plprune.AttentionAdapter(
        name="my-attention",
        matches=lambda m: isinstance(m, MyAttention),
        query="wq", key="wk", value="wv", output="wo",      # submodule paths inside MyAttention
        num_heads=lambda m: m.n_heads,
    ))

Built-in adapters (module :mod:`plprune.sites.builtin`): plprune's BERT/Switch attention, the Hugging Face
BERT family (``BertAttention``: ``self.query/key/value``, ``output.dense``; RoBERTa, ELECTRA, ... share it)
and the ``q_proj/k_proj/v_proj/o_proj`` family (ViT and others) — both matched by structure, not by class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.groups import GateSite, Group, ParamSlice


@dataclass(frozen=True)
class AttentionAdapter:
    """How to read one attention family: the projections' submodule paths and the head count.

    ``matches(module)`` says whether a module is an attention block of this family; ``query``, ``key``,
    ``value``, ``output`` are dotted paths of its ``nn.Linear`` projections; ``num_heads(module)`` its head
    count (key/value heads must equal query heads: grouped-query attention is not a head group here).
    ``set_num_heads(module, n)`` (optional) records a new head count after compaction
    (:mod:`plprune.compaction`) wherever the family keeps one; without it compaction only reshapes the
    projections, which suffices for modules that infer the head count from the projections' width.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    query: str
    key: str
    value: str
    output: str
    num_heads: Callable[[nn.Module], int]
    set_num_heads: Callable[[nn.Module, int], None] | None = None


_ATTENTION_ADAPTERS: list[AttentionAdapter] = []


def register_attention(adapter: AttentionAdapter) -> AttentionAdapter:
    """Make ``adapter`` known to head discovery (later registrations are tried first)."""
    if not isinstance(adapter, AttentionAdapter):
        raise PlpruneError(f"register_attention takes an AttentionAdapter, got {type(adapter).__name__}")
    _ATTENTION_ADAPTERS[:] = [a for a in _ATTENTION_ADAPTERS if a.name != adapter.name]
    _ATTENTION_ADAPTERS.insert(0, adapter)
    return adapter


def unregister_attention(name: str) -> None:
    """Forget the adapter called ``name`` (no error if there is none)."""
    _ATTENTION_ADAPTERS[:] = [a for a in _ATTENTION_ADAPTERS if a.name != name]


def attention_adapters() -> list[AttentionAdapter]:
    return list(_ATTENTION_ADAPTERS)


def _linear(module: nn.Module, path: str, adapter: AttentionAdapter, module_name: str) -> nn.Linear:
    try:
        found = module.get_submodule(path)
    except AttributeError as error:
        raise PlpruneError(
            f"attention adapter {adapter.name!r} names submodule {path!r}, which "
            f"{module_name or 'the model'} ({type(module).__name__}) does not have"
        ) from error
    if not isinstance(found, nn.Linear):
        raise PlpruneError(
            f"attention adapter {adapter.name!r}: {module_name}.{path} must be an nn.Linear, "
            f"got {type(found).__name__}"
        )
    return found


class HeadSite(GateSite):
    """The heads of one attention module, gated by a pre-hook on its output projection."""

    def __init__(self, module_name: str, module: nn.Module, layer: int, adapter: AttentionAdapter) -> None:
        heads = int(adapter.num_heads(module))
        super().__init__(module_name, module, "head", layer, heads)
        self.adapter = adapter
        self.paths = {p: getattr(adapter, p) for p in ("query", "key", "value", "output")}
        linears = {p: _linear(module, path, adapter, module_name) for p, path in self.paths.items()}
        width = linears["output"].in_features
        if heads < 1 or width % heads:
            raise PlpruneError(
                f"{module_name}: {heads} heads do not divide the output projection's {width} input features"
            )
        self.head_size = width // heads
        for p in ("query", "key", "value"):
            if linears[p].out_features != width:
                raise PlpruneError(
                    f"{module_name}.{self.paths[p]} has {linears[p].out_features} outputs but the output "
                    f"projection reads {width}: grouped-query/multi-query attention has no per-head group "
                    "of Q/K/V rows here"
                )
        self.linears = linears

    def _param(self, proj: str, kind: str) -> str:
        prefix = f"{self.module_name}." if self.module_name else ""
        return f"{prefix}{self.paths[proj]}.{kind}"

    def groups(self) -> list[Group]:
        out = []
        for h in range(self.num_groups):
            start, stop = h * self.head_size, (h + 1) * self.head_size
            slices = []
            for proj in ("query", "key", "value"):
                slices.append(ParamSlice(self._param(proj, "weight"), 0, start, stop))
                if self.linears[proj].bias is not None:
                    slices.append(ParamSlice(self._param(proj, "bias"), 0, start, stop))
            slices.append(ParamSlice(self._param("output", "weight"), 1, start, stop))
            out.append(Group("head", self.layer, h, tuple(slices)))
        return out

    def _gate_context(self, module: nn.Module, args: tuple) -> tuple | None:
        gate = self.gate
        if gate is None:
            return None
        context: Tensor = args[0]
        shape = context.shape
        heads = context.reshape(*shape[:-1], self.num_groups, self.head_size)
        gated = heads * gate.to(context.device, context.dtype)[:, None]
        return (gated.reshape(shape), *args[1:])

    def _register_hooks(self) -> list[RemovableHandle]:
        return [self.linears["output"].register_forward_pre_hook(self._gate_context)]


def find_head_sites(model: nn.Module) -> tuple[list[HeadSite], list[str]]:
    """Head sites of ``model`` in module order, and the class names of attention-like modules (name
    containing "Attention") that no adapter matched and that lie outside every matched module."""
    sites: list[HeadSite] = []
    unmatched: list[str] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside):
            continue
        adapter = next((a for a in _ATTENTION_ADAPTERS if a.matches(module)), None)
        if adapter is not None:
            sites.append(HeadSite(name, module, len(sites), adapter))
            inside.append(name)
        elif "attention" in type(module).__name__.lower() and not isinstance(module, nn.Dropout):
            unmatched.append(type(module).__name__)
    return sites, list(dict.fromkeys(unmatched))
