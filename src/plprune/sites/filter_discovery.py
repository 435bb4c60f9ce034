"""Conv filter discovery (placeholder: plprune's GatedConvBN blocks only; replaced by a dependency graph)."""

from __future__ import annotations

from typing import Any

from torch import nn

from plprune.errors import PlpruneError
from plprune.sites.filters import ConvMember, FilterSite


def find_filter_sites(model: nn.Module, example_inputs: Any = None) -> list[FilterSite]:
    from plprune.models.filters import GatedConvBN

    sites: list[FilterSite] = []
    for name, module in model.named_modules():
        if isinstance(module, GatedConvBN):
            prefix = f"{name}." if name else ""
            member = ConvMember(f"{prefix}conv", module.conv, f"{prefix}bn", module.bn)
            sites.append(FilterSite(name, module, len(sites), [member]))
    if not sites:
        raise PlpruneError(f"{type(model).__name__} has no prunable conv filters")
    return sites
