"""Attention heads of any model, found through one small adapter per attention layout.

An :class:`AttentionAdapter` is layout data: where an attention module keeps its Q/K/V projections (three
``nn.Linear``/``Conv1D`` modules, or one fused projection and how its rows interleave), its output
projection, and how many query and key/value heads it has. Query head j of that module is the group (paper
Sec. 3.2.1): its ``d`` rows of W_Q (and bias), its ``d`` columns of W_O, and, when every query head has its
own key/value head (multi-head attention), those ``d`` rows of W_K, W_V too. Its gate is applied by a
forward *pre*-hook on W_O that multiplies head j's slice of the concatenated context by ``g_j`` — exactly the
"gate on each head's context before the output projection" of paper Eq. 6, with no cooperation from the
model. A pruned head (all its weights zero, gate 0) contributes nothing.

**Grouped-query and multi-query attention** (``kv_heads < heads``; query head j reads KV head
``j // (heads / kv_heads)``): the unit is the query head, and a layer keeps *the same number of query heads
in every KV group* (:mod:`plprune.keep` rounds each layer's count to a multiple of ``kv_heads`` and ranks
heads within each KV group). KV heads are shared and never removed. Why this unit and not "a KV group with
its query heads": it is the only one that can prune a multi-query model (one KV head) or go below one KV
group's share (8 query / 2 KV heads: whole groups allow only 0% or 50%), it keeps the layout a Llama-style
config describes (``num_key_value_heads`` unchanged, ``num_attention_heads = kept × kv_heads``), and the KV
projections are the small part of GQA attention (2·kv·d rows against heads·d rows of W_Q plus W_O's columns).
Torch-Pruning removes query heads evenly within groups for the same reason.

Adding a family (e.g. your own attention module) is one call::

    plprune.register_attention(plprune.AttentionAdapter(
        name="my-attention",
        matches=lambda m: isinstance(m, MyAttention),
        query="wq", key="wk", value="wv", output="wo",      # submodule paths inside MyAttention
        num_heads=lambda m: m.n_heads,
        num_kv_heads=lambda m: m.n_kv_heads,               # optional: grouped-query attention
    ))

Built-in adapters (module :mod:`plprune.sites.builtin`) cover plprune's BERT/Switch and the Hugging Face
layouts, matched by structure, not by class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.groups import GateSite, Group, ParamSlice
from plprune.sites.projections import (
    in_dim,
    in_features,
    out_dim,
    out_features,
    projection_at,
)

#: how a fused QKV projection orders its output rows (``d`` = head size, ``r`` = heads per KV head):
#: ``"blocked"``: [Q of every head | K of every KV head | V of every KV head] (GPT-2 ``c_attn``, Phi-3
#: ``qkv_proj``, Falcon multi-query); ``"per_head"``: [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (GPT-NeoX, Falcon
#: without multi-query); ``"per_kv_group"``: per KV group, its r query heads then its k and v
#: ([q_0 .. q_{r-1} k_0 v_0 | ...], Falcon's new decoder architecture).
FUSED_LAYOUTS = ("blocked", "per_head", "per_kv_group")


@dataclass(frozen=True)
class AttentionAdapter:
    """How to read one attention layout: projection paths, fused-QKV layout, head counts.

    ``matches(module)`` says whether a module is an attention block of this family; ``query``, ``key``,
    ``value``, ``output`` are dotted paths of its projections (``nn.Linear``, or Hugging Face's ``Conv1D``,
    whose weight is stored ``[in, out]``). A fused QKV projection is named by ``fused`` instead (``query``,
    ``key``, ``value`` then empty) with its row order ``fused_layout`` (:data:`FUSED_LAYOUTS`).
    ``num_heads(module)`` is the query-head count, ``num_kv_heads(module)`` the key/value-head count (default:
    the same: multi-head attention). ``head_tables``: other per-head parameters, as ``(path, dim)`` with one
    entry per head along ``dim``, sliced with the heads on compaction (e.g. T5's relative-position bias
    table). They are not part of the heads' groups (not zeroed by the mask): a table may be shared by every
    layer of a stack, and a pruned head's output is gated to zero anyway.
    ``set_num_heads(module, heads, kv_heads)`` (optional) records the new counts after compaction
    (:mod:`plprune.compaction`) wherever the family keeps them; without it compaction only reshapes the
    projections, which suffices for modules that infer the counts from the projections' width. For a
    two-argument ``set_num_heads(module, heads)`` (plprune ≤ 0.1) the KV count is not passed.
    ``shared_bias_key(module_name)`` (optional): modules that return the same key consume one position
    bias computed once for all of them (T5's stack); their heads compact only if they keep the same heads.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    query: str
    key: str
    value: str
    output: str
    num_heads: Callable[[nn.Module], int]
    set_num_heads: Callable[..., None] | None = None
    num_kv_heads: Callable[[nn.Module], int] | None = None
    fused: str | None = None
    fused_layout: str = "blocked"
    head_tables: tuple[tuple[str, int], ...] = ()
    shared_bias_key: Callable[[str], str | None] | None = None

    def __post_init__(self) -> None:
        if self.fused is None and not (self.query and self.key and self.value):
            raise PlpruneError(
                f"attention adapter {self.name!r}: name the query, key and value projections, or one fused "
                "projection (fused=...)"
            )
        if self.fused_layout not in FUSED_LAYOUTS:
            raise PlpruneError(
                f"attention adapter {self.name!r}: fused_layout must be one of {FUSED_LAYOUTS}, "
                f"got {self.fused_layout!r}"
            )


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


@dataclass(frozen=True)
class HeadLayout:
    """Where head j's rows are: ``q_rows[j]`` (start of its ``d`` rows in the Q output, or in the fused
    output), ``kv_rows[g]`` ((k start, v start) of KV head g); ``path`` of each projection."""

    heads: int
    kv_heads: int
    head_size: int
    q_rows: tuple[int, ...]
    kv_rows: tuple[tuple[int, int], ...]

    @property
    def per_kv(self) -> int:
        return self.heads // self.kv_heads

    def kv_of(self, head: int) -> int:
        """The KV head query head ``head`` reads (``head // (heads / kv_heads)``)."""
        return head // self.per_kv


def _layout(heads: int, kv_heads: int, d: int, fused_layout: str | None) -> HeadLayout:
    r = heads // kv_heads
    if fused_layout is None:  # separate projections: each starts at row 0
        q = tuple(j * d for j in range(heads))
        kv = tuple((g * d, g * d) for g in range(kv_heads))
    elif fused_layout == "blocked":
        q = tuple(j * d for j in range(heads))
        kv = tuple(((heads + g) * d, (heads + kv_heads + g) * d) for g in range(kv_heads))
    elif fused_layout == "per_head":
        if kv_heads != heads:
            raise PlpruneError("a per-head interleaved QKV projection has one K and V per query head")
        q = tuple(3 * j * d for j in range(heads))
        kv = tuple(((3 * g + 1) * d, (3 * g + 2) * d) for g in range(kv_heads))
    else:  # per_kv_group
        q = tuple(((j // r) * (r + 2) + j % r) * d for j in range(heads))
        kv = tuple(((g * (r + 2) + r) * d, (g * (r + 2) + r + 1) * d) for g in range(kv_heads))
    return HeadLayout(heads, kv_heads, d, q, kv)


class HeadSite(GateSite):
    """The query heads of one attention module, gated by a pre-hook on its output projection."""

    def __init__(self, module_name: str, module: nn.Module, layer: int, adapter: AttentionAdapter) -> None:
        heads = int(adapter.num_heads(module))
        kv_heads = int(adapter.num_kv_heads(module)) if adapter.num_kv_heads is not None else heads
        super().__init__(module_name, module, "head", layer, heads)
        self.adapter = adapter
        where = module_name or "the model"
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise PlpruneError(
                f"{where}: {heads} query heads and {kv_heads} key/value heads: the query heads must be a "
                "multiple of the key/value heads (grouped-query attention)"
            )
        roles = ("fused",) if adapter.fused is not None else ("query", "key", "value")
        self.paths = {p: getattr(adapter, p) for p in (*roles, "output")}
        who = f"attention adapter {adapter.name!r}"
        self.linears = {p: projection_at(module, path, who, module_name) for p, path in self.paths.items()}
        width = in_features(self.linears["output"])
        if width % heads:
            raise PlpruneError(
                f"{where}: {heads} heads do not divide the output projection's {width} input features"
            )
        d = self.head_size = width // heads
        self.kv_heads = kv_heads
        self.layout = _layout(heads, kv_heads, d, adapter.fused_layout if adapter.fused else None)
        self._check_widths(where)

    def _check_widths(self, where: str) -> None:
        heads, kv, d = self.num_groups, self.kv_heads, self.head_size
        if self.adapter.fused is not None:
            got, want = out_features(self.linears["fused"]), (heads + 2 * kv) * d
            if got != want:
                raise PlpruneError(
                    f"{where}.{self.paths['fused']} has {got} outputs, but {heads} query and {kv} key/value "
                    f"heads of size {d} need {want} (read from the output projection's {heads * d} inputs)"
                )
            return
        for proj, n in (("query", heads), ("key", kv), ("value", kv)):
            got = out_features(self.linears[proj])
            if got != n * d:
                hint = (
                    f"; with {got // d} key/value heads say so with num_kv_heads= (grouped-query attention)"
                    if proj != "query" and got % d == 0 and heads % max(got // d, 1) == 0
                    else ""
                )
                raise PlpruneError(
                    f"{where}.{self.paths[proj]} has {got} outputs but {n} heads of size {d} need "
                    f"{n * d}{hint}"
                )

    @property
    def grouped(self) -> bool:
        """Grouped-/multi-query attention: query heads share key/value heads."""
        return self.kv_heads < self.num_groups

    def _param(self, proj: str, kind: str) -> str:
        prefix = f"{self.module_name}." if self.module_name else ""
        return f"{prefix}{self.paths[proj]}.{kind}"

    def _rows(self, proj: str, start: int) -> list[ParamSlice]:
        linear = self.linears[proj]
        stop = start + self.head_size
        out = [ParamSlice(self._param(proj, "weight"), out_dim(linear), start, stop)]
        if linear.bias is not None:
            out.append(ParamSlice(self._param(proj, "bias"), 0, start, stop))
        return out

    def groups(self) -> list[Group]:
        out = []
        layout, d = self.layout, self.head_size
        q_proj = "fused" if "fused" in self.paths else "query"
        k_proj, v_proj = ("fused", "fused") if "fused" in self.paths else ("key", "value")
        output = self.linears["output"]
        for j in range(self.num_groups):
            slices = self._rows(q_proj, layout.q_rows[j])
            if not self.grouped:  # multi-head attention: the head owns its key and value rows too
                k_start, v_start = layout.kv_rows[j]
                slices += self._rows(k_proj, k_start) + self._rows(v_proj, v_start)
            o_dim = in_dim(output)  # W_O's input dimension
            slices.append(ParamSlice(self._param("output", "weight"), o_dim, j * d, (j + 1) * d))
            out.append(Group("head", self.layer, j, tuple(slices)))
        return out

    def head_tables(self) -> list[tuple[str, int]]:
        """``(parameter name, dim)`` of each per-head table this module has (some layers have none)."""
        prefix = f"{self.module_name}." if self.module_name else ""
        tables = self.adapter.head_tables
        return [(f"{prefix}{path}", dim) for path, dim in tables if _has_tensor(self.module, path)]

    def even_ids(self) -> list[int] | None:
        """For grouped-query attention, each query head's KV head: the keep rule keeps the same number of
        query heads per KV head (:mod:`plprune.keep`). ``None`` for multi-head attention."""
        return [self.layout.kv_of(j) for j in range(self.num_groups)] if self.grouped else None

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


def _has_tensor(module: nn.Module, path: str) -> bool:
    owner_path, _, attr = path.rpartition(".")
    try:
        owner = module.get_submodule(owner_path) if owner_path else module
    except AttributeError:
        return False
    return isinstance(getattr(owner, attr, None), Tensor)


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
