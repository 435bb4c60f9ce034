"""Conv filters of any CNN, found with Torch-Pruning's dependency graph (Fang et al., CVPR 2023).

:func:`find_filter_sites` runs the model once on ``example_inputs`` and builds a
``torch_pruning.DependencyGraph``. For every ``nn.Conv1d``/``nn.Conv2d`` (model order) it asks the graph
which layers are coupled to that conv's output channels (``get_pruning_group(conv,
prune_conv_out_channels, all channels)``): the convs whose outputs are summed into the same channels by
residual additions, the norm layer after each, and the layers that read the channels. The *writers* of the
channels (convs and their norms) form one :class:`~plprune.sites.filters.FilterSite`; channel c of all of
them is one group (``conv.weight[c]``, ``conv.bias[c]``, norm ``weight[c]``, ``bias[c]`` of every member),
and the layers that only read the channels are left alone (a zeroed channel reads as 0). Norms: torch's
``nn.BatchNorm1d``/``nn.BatchNorm2d`` (any ``_BatchNorm``) and plprune's
:class:`~plprune.models.layers.BatchNorm`, which the graph learns through a ``customized_pruners`` entry
modelled on torch-pruning's own ``BatchnormPruner`` (channel-wise, in = out).

Site i has ``layer = i`` (sites ordered by their first conv in ``model.named_modules()``). A site's
``module`` is the first conv's parent when that parent wraps just this conv (e.g. plprune's
:class:`~plprune.models.filters.GatedConvBN`, or a ``Sequential(conv, bn, relu)``), is called once and
outputs the site's channels ``(N, C, *spatial)``; otherwise the conv itself. ``feature_module`` (the
feature maps CHIP scores) is that wrapper (post-activation maps, as before for plprune's models) or, when
the site has no wrapper, the first member's norm (its gated output).

**Skipped convs** (the group is dropped whole; the error for a model with no prunable conv lists them):

* grouped and depthwise convs (``groups > 1``), as writers *or* readers of the channels: their channels are
  tied to their input channels group by group, which a per-channel gate does not model;
* convs whose channels reach the model output (e.g. a fully convolutional head): pruning would change the
  output's shape, not just its values;
* channels also written by something that is not a gated conv → norm: a ``Linear``, a ``LayerNorm``,
  ``GroupNorm``, ``PReLU``, a free ``nn.Parameter``, a ``ConvTranspose``/``Conv3d``, a norm without affine
  parameters (its output is not 0 for a zero input), a norm that does not directly follow exactly one conv
  (e.g. a BN after a residual sum), or a conv whose output also bypasses its norm;
* layers called more than once per forward pass (shared weights), and convs the forward pass never reaches;
* groups through operations torch-pruning maps wrongly, which would make zeroing a group differ from
  removing its channels: a writer whose channel indices are not exactly 0..C-1 of the root conv's (the
  graph mapped indices through a concat, a slice or a pad), an element-wise op that changes the channel
  count (``F.pad`` on the channel dimension: torch-pruning treats it as the identity on channels), a slice
  the graph misreads (torch-pruning takes dim 2 as the channels of every 3-D tensor, so it misreads both a
  length slice and a channel slice of a ``Conv1d`` map), a reshape that changes the channel dimension
  other than a flatten to ``(N, features)``, and a transpose/permute that moves the channel dimension.

**Our ResNet.** Its option-A shortcut subsamples with a stride slice and zero-pads the new channels with
``F.pad``. Torch-pruning treats the pad as the identity on channels, so the residual group of the stem and
every block's second conv comes out with the 16 stage-1 channels mapped onto 32 and 64 channel indices
(and, for ``dims=1``, the length subsampling ``x[:, :, ::2]`` read as a channel slice). Those groups fail
the checks above, so ResNet keeps exactly its inner convs (each block's ``conv1``) as filter sites, as the
hand-written discovery did. (The true coupling is nested across stages, stage-1 channel c being tied to
channel c of stages 2 and 3, which a site of equal-width members cannot express anyway.)

**Limits.** The graph is traced through autograd, so a tensor that does not require grad and is *added*
into a channel (the model input on a residual path, a buffer) is invisible to it: then zeroing the group
removes the filters but leaves that addend in the channel. The trace needs autograd, so it runs with
gradients enabled (never ``torch.no_grad``; no backward pass, so no ``.grad`` changes) in eval mode; every
module's train/eval mode and every buffer (BatchNorm running statistics) is restored afterwards.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from plprune.devices import model_device, nested_to_device
from plprune.errors import PlpruneError
from plprune.models.layers import BatchNorm
from plprune.sites.filters import ConvMember, FilterSite

__all__ = ["build_dependency_graph", "find_filter_sites"]

_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.modules.batchnorm._BatchNorm, BatchNorm)

_NEEDS_INPUTS = (
    "finding conv filters needs example_inputs (a batch the model accepts: model(example_inputs), a tuple is "
    "unpacked, a dict is passed as keyword arguments): channels coupled by residual additions are found by "
    "tracing the model once; e.g. GroupSet(model, kinds=('filter',), example_inputs=x)"
)


def find_filter_sites(model: nn.Module, example_inputs: Any = None) -> list[FilterSite]:
    """Every prunable set of conv output channels of ``model``, one :class:`FilterSite` per coupled set,
    in model order (module docstring: what is found, what is skipped and why)."""
    if example_inputs is None:
        raise PlpruneError(_NEEDS_INPUTS)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        kinds = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise PlpruneError(
            f"{type(model).__name__} has no conv layer (nn.Conv1d / nn.Conv2d), so no conv filters to prune; "
            f"its modules are: {', '.join(kinds) or 'none'}"
        )
    trace = _Trace(model, example_inputs)
    sites, skipped = trace.sites()
    if not sites:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise PlpruneError(
            f"{type(model).__name__} has {len(convs)} conv layer(s) but no prunable conv filters ({reasons})"
        )
    return sites


def build_dependency_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's ``DependencyGraph`` of ``model``, traced once on ``example_inputs`` exactly as
    discovery traces it (plprune's BatchNorm known through a customized pruner that couples its channels but
    refuses to prune them; gradients enabled, no backward pass; every module's train/eval mode and every
    buffer restored afterwards). Compaction (:mod:`plprune.compaction.filters`) reads the coupling from it."""
    if example_inputs is None:
        raise PlpruneError(_NEEDS_INPUTS)
    return _Trace(model, example_inputs).graph


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, tuple):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _batchnorm_pruner() -> Any:
    """A torch-pruning pruner for plprune's BatchNorm: channel-wise with in = out, like tp's
    ``BatchnormPruner`` (which checks for torch's ``_BatchNorm`` class). Discovery never prunes with it."""
    from torch_pruning.pruner.function import BasePruningFunc

    class BatchNormPruner(BasePruningFunc):
        TARGET_MODULES = BatchNorm

        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            raise PlpruneError("plprune masks conv filters; it never removes channels from a BatchNorm")

        prune_in_channels = prune_out_channels  # one function: the intra-layer dependency (in = out)

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.num_features)

        get_in_channels = get_out_channels

    return BatchNormPruner()


def _out_shape(grad_fn: Any, index: int = 0) -> tuple[int, ...] | None:
    meta = getattr(grad_fn, "_input_metadata", None)
    if not meta or index >= len(meta):
        return None
    return tuple(meta[index].shape)


def _input_shapes(grad_fn: Any) -> list[tuple[int, ...]]:
    shapes = []
    for fn, nr in getattr(grad_fn, "next_functions", ()):
        if fn is not None and (shape := _out_shape(fn, nr)) is not None:
            shapes.append(shape)
    return shapes


class _Trace:
    """One traced forward pass: the dependency graph, call counts and output shapes of every module."""

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        import torch_pruning as tp

        self.tp = tp
        self.model = model
        self.names = {m: name for name, m in model.named_modules()}
        self.order = {m: i for i, m in enumerate(self.names)}
        self.calls: Counter[nn.Module] = Counter()
        self.out_channels: dict[nn.Module, tuple[int, int] | None] = {}
        self.output_fns: set[Any] = set()

        def record(module: nn.Module, args: Any, output: Any) -> None:
            self.calls[module] += 1
            ok = isinstance(output, Tensor) and output.dim() >= 3
            self.out_channels[module] = (output.dim(), int(output.shape[1])) if ok else None

        def forward(module: nn.Module, inputs: Any) -> Any:
            out = _call(module, inputs)
            self.output_fns = {t.grad_fn for t in _tensors(out) if t.grad_fn is not None}
            return out

        example_inputs = nested_to_device(example_inputs, model_device(model))  # a CPU batch, a GPU model
        modes = {m: m.training for m in model.modules()}
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        handles = [m.register_forward_hook(record) for m in model.modules()]
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.graph = tp.DependencyGraph().build_dependency(
                    model,
                    example_inputs=example_inputs,
                    forward_fn=forward,
                    customized_pruners={BatchNorm: _batchnorm_pruner()},
                    verbose=False,
                )
        except PlpruneError:
            raise
        except Exception as error:
            raise PlpruneError(
                f"finding conv filters: tracing {type(model).__name__} on example_inputs failed "
                f"({type(error).__name__}: {error}); {_NEEDS_INPUTS}"
            ) from error
        finally:
            for handle in handles:
                handle.remove()
            for module, mode in modes.items():
                module.training = mode
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    saved = buffers.get(name)
                    if saved is not None and saved.shape == buffer.shape:
                        buffer.copy_(saved)

    def name(self, module: Any) -> str:
        return self.names.get(module, type(module).__name__) or "the model"

    # -- graph walks -----------------------------------------------------------------------------
    def _is_op(self, node: Any) -> bool:
        """A torch-pruning stand-in for a functional op (add, relu, view, slice, cat, ...), not a layer."""
        ops = self.tp.ops
        return isinstance(
            node.module,
            (
                ops._ElementWiseOp,
                ops._ReshapeOp,
                ops._SliceOp,
                ops._ConcatOp,
                ops._SplitOp,
                ops._UnbindOp,
                ops._ExpandOp,
            ),
        )

    def _reach(self, node: Any, forward: bool) -> set[Any]:
        """The layer nodes reached from ``node`` through functional ops only (``forward``: its consumers,
        else its sources)."""
        found, seen = set(), set()
        stack = list(node.outputs if forward else node.inputs)
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if self._is_op(current):
                stack.extend(current.outputs if forward else current.inputs)
            else:
                found.add(current)
        return found

    def _carriers(self, starts: list[Any]) -> list[Any]:
        """The nodes the writers' channels flow through: ops reached forward from ``starts`` through ops
        only, and the layer nodes where that stops (readers, norms, the output)."""
        seen: list[Any] = []
        stack = [n for start in starts for n in start.outputs]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.append(node)
            if self._is_op(node):
                stack.extend(node.outputs)
        return seen

    def _op_problem(self, node: Any) -> str | None:
        """Why torch-pruning's reading of this functional op is wrong for conv channels (``None``: fine)."""
        ops, grad_fn = self.tp.ops, node.grad_fn
        if isinstance(node.module, ops._SliceOp):
            dim = int(node.module.dim)
            sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
            rank = len(sizes) if sizes is not None else -1
            graph_maps = not ((rank == 4 and dim != 1) or (rank == 3 and dim != 2))
            if graph_maps != (dim == 1):
                return f"a slice along dim {dim} of a {rank}-D tensor, which the dependency graph misreads"
            return None
        if isinstance(node.module, (ops._ConcatOp, ops._SplitOp, ops._UnbindOp)):
            return None  # index-mapped by the graph; writers off 0..C-1 are caught by the caller
        name = grad_fn.name() if hasattr(grad_fn, "name") else "an unknown op"
        if "Transpose" in name or "Permute" in name:
            dims = getattr(grad_fn, "_saved_dims", None)
            if dims is None:
                dims = tuple(getattr(grad_fn, f"_saved_dim{i}", -1) for i in range(2))
            dims = [int(d) for d in dims]
            moved = (dims[0], dims[1]) != (0, 1) if "Permute" in name else (0 in dims or 1 in dims)
            return f"{name} moves the channel dimension" if moved else None
        out = _out_shape(grad_fn)
        if out is None or len(out) < 2:
            return None
        for shape in _input_shapes(grad_fn):
            if len(shape) < 2 or shape[1] in (1, out[1]):
                continue
            if isinstance(node.module, ops._ReshapeOp) and len(out) == 2:
                continue  # flatten to (N, features): index-mapped by the graph for the reading layer
            return f"{name} changes the channel count from {shape[1]} to {out[1]}"
        return None

    # -- groups ----------------------------------------------------------------------------------
    def _group(self, conv: nn.Module) -> tuple[list[nn.Module], dict[nn.Module, nn.Module], str | None]:
        """The convs writing ``conv``'s channels, the norm after each, and why they cannot be a site."""
        graph, channels = self.graph, int(conv.out_channels)
        full = list(range(channels))
        group = graph.get_pruning_group(conv, self.tp.prune_conv_out_channels, full)
        writers: list[nn.Module] = []
        norms: list[Any] = []
        problems: list[str] = []
        complain = problems.append

        for item in group.items:
            node, handler = item.dep.target, item.dep.handler
            module = node.module
            if self._is_op(node) or isinstance(module, self.tp.ops._OutputOp):
                continue  # ops are checked along the channels' path below
            pruner = graph.get_pruner_of_module(module)
            reads_only = (
                pruner is not None
                and pruner.prune_in_channels != pruner.prune_out_channels
                and handler == pruner.prune_in_channels
            )
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                complain(f"grouped/depthwise conv {self.name(module)} (groups={module.groups}) uses them")
                continue
            if reads_only:
                continue  # a layer reading the channels: a zeroed channel reads as 0
            label = f"{type(module).__name__} {self.name(module)}"
            if node.grad_fn in self.output_fns:
                complain(f"{label} writes the model output")
            elif isinstance(module, (*_CONVS, *_NORMS)):
                size = module.out_channels if isinstance(module, _CONVS) else module.num_features
                if list(item.idxs) != full or list(item.root_idxs) != full or size != channels:
                    complain(f"{label} is coupled to them with a channel mapping other than the identity")
                elif self.calls[module] != 1:
                    complain(f"{label} is called {self.calls[module]} times per forward pass")
                elif isinstance(module, _CONVS):
                    writers.append(module)
                elif getattr(module, "weight", None) is None or getattr(module, "bias", None) is None:
                    complain(f"{label} has no affine weight and bias (its output is not 0 for a zero input)")
                else:
                    norms.append(node)
            else:
                complain(f"{label} also writes them (plprune gates conv → BatchNorm channels only)")
        writers.sort(key=self.order.__getitem__)
        for node in self._carriers([graph.module2node[w] for w in writers] + norms):
            is_op = self._is_op(node)
            if isinstance(node.module, self.tp.ops._OutputOp) or (is_op and node.grad_fn in self.output_fns):
                complain("the channels are (part of) the model output")
            elif is_op and (op_problem := self._op_problem(node)) is not None:
                problems.insert(0, op_problem)  # the root cause, before the index mismatches it makes
        norm_of: dict[nn.Module, nn.Module] = {}
        for norm_node in norms:
            sources = self._reach(norm_node, forward=False)
            conv_node = next(iter(sources)) if len(sources) == 1 else None
            if conv_node is None or conv_node.module not in writers:
                complain(f"norm {self.name(norm_node.module)} does not directly follow one conv")
            elif conv_node.module in norm_of:
                complain(f"conv {self.name(conv_node.module)} is followed by two norms")
            else:
                norm_of[conv_node.module] = norm_node.module
        for writer in writers:
            consumers = self._reach(self.graph.module2node[writer], forward=True)
            if writer in norm_of and consumers != {self.graph.module2node[norm_of[writer]]}:
                complain(f"the output of conv {self.name(writer)} is used before its norm too")
        if not writers and not problems:
            complain("no conv writes them")
        return writers, norm_of, problems[0] if problems else None

    def _wrapper(self, conv: nn.Module, channels: int) -> nn.Module | None:
        """``conv``'s parent if it wraps just this conv, runs once and outputs ``(N, channels, ...)``."""
        parent_name = self.names[conv].rpartition(".")[0]
        if not parent_name:
            return None
        parent = self.model.get_submodule(parent_name)
        inner_convs = [m for m in parent.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        shape = self.out_channels.get(parent)
        if inner_convs != [conv] or self.calls[parent] != 1 or shape is None or shape[1] != channels:
            return None
        return parent

    def sites(self) -> tuple[list[FilterSite], dict[str, str]]:
        found: list[tuple[list[nn.Module], dict[nn.Module, nn.Module]]] = []
        skipped: dict[str, str] = {}
        done: set[nn.Module] = set()

        def skip(convs: Iterable[nn.Module], problem: str) -> None:
            for conv in convs:
                skipped[self.name(conv)] = problem

        for conv in self.names:
            if not isinstance(conv, nn.modules.conv._ConvNd) or conv in done:
                continue
            name = self.name(conv)
            if not isinstance(conv, _CONVS):
                skipped[name] = f"{type(conv).__name__} is not a Conv1d/Conv2d"
            elif conv not in self.graph.module2node:
                skipped[name] = "the forward pass on example_inputs does not reach it"
            elif conv.groups != 1:
                skipped[name] = f"grouped/depthwise conv (groups={conv.groups})"
            else:
                writers, norm_of, problem = self._group(conv)
                if problem is None and done.intersection(writers):  # not transitive: trust neither
                    problem = "the dependency graph couples these channels inconsistently with another site"
                    clashing = [site for site in found if set(site[0]) & set(writers)]
                    found = [site for site in found if site not in clashing]
                    skip((w for site in clashing for w in site[0]), problem)
                done.update(writers)
                if problem is None:
                    found.append((writers, norm_of))
                else:
                    skip(dict.fromkeys([conv, *writers]), problem)
        found.sort(key=lambda site: self.order[site[0][0]])
        sites = []
        for layer, (writers, norm_of) in enumerate(found):
            members = [
                ConvMember(self.name(w), w, self.name(norm_of[w]) if w in norm_of else None, norm_of.get(w))
                for w in writers
            ]
            channels = int(writers[0].out_channels)
            wrapper = self._wrapper(writers[0], channels) if len(writers) == 1 else None
            module = wrapper if wrapper is not None else writers[0]
            sites.append(FilterSite(self.names[module], module, layer, members, feature_module=wrapper))
        return sites, skipped
