"""Optimisation-based sparsity methods of the sparse-DNN course, one module per family.

* :mod:`~plprune.sparsity.base` — what they share: :class:`Units` (the vector a method makes sparse: single
  weights, or structured groups seen through their norms) and :class:`SparsityMethod` (the training-time
  hooks: before the forward pass, when gradients are ready, after the optimizer step);
* :mod:`~plprune.sparsity.prox` — proximal operators (ℓ1, ℓq, q-shrinkage, SCAD, MCP, firm, ℓ0) and
  proximal gradient training;
* :mod:`~plprune.sparsity.trimmed_l1` — trimmed ℓ1 (Yun et al. 2019) with the capped-simplex projection;
* :mod:`~plprune.sparsity.gsm` — global sparse momentum SGD (Ding et al. 2019);
* :mod:`~plprune.sparsity.hard_concrete` — hard-concrete ℓ0 gates (Louizos et al. 2018);
* :mod:`~plprune.sparsity.continuous` — continuous sparsification (Savarese et al. 2020).

The course's networks, multi-exit (BranchyNet; PABEE) and dynamic inference (channel gating, dynamic
convolution), are models: :mod:`plprune.models.early_exit` and :mod:`plprune.models.dynamic`.

Methods 1-5 run at weight level (:class:`~plprune.sparsity.weights.WeightUnits`) or on structured groups
(:class:`~plprune.sparsity.group_units.GroupUnits`), driven by :class:`plprune.weight_pruner.WeightPruner`
or :class:`plprune.pruner.Pruner`; ``plprune train --method prox-l1 [--kinds weight]`` runs them.
"""
