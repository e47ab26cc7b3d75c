"""Weighted merging of LoRA adapters into a new named adapter (peft's
`add_weighted_adapter`).

In this library's layout a LoRA update is `s * A @ B` (`A`: in x r, `B`:
r x out, `s = alpha / r`). Per projection, with weights `w_i`:

- `"linear"`: `A = sum sqrt(w_i) s_i A_i`, `B = sum sqrt(w_i) B_i` (same
  rank; peft's definition: cross terms included, exact for one adapter);
- `"cat"`: `A = [w_i s_i A_i]`, `B = [B_i]` stacked along the rank: exactly
  `sum w_i s_i A_i B_i`, rank `sum r_i`;
- `"svd"`: the best rank-`svd_rank` factorisation of `sum w_i s_i A_i B_i`
  (default rank: the largest `r_i`);
- `"ties"`, `"dare_linear"`, `"dare_ties"`: TIES-merging (Yadav et al. 2023)
  and DARE (Yu et al. 2023) applied to the `A`s and to the `B`s with
  weights `sqrt(w_i s_i)`, as peft does (same rank); `density` is the
  fraction of entries kept.

The merged adapter has `alpha = rank` (scaling 1: the scalings are folded
in) and a copy of the first adapter's head. One adapter at weight 1.0
reproduces itself for every combination (at `density=1.0` for TIES/DARE).
"""

import numpy as np

from keras_adapters.core.injection import units_of
from keras_adapters.methods.lora import LoRAConfig

COMBINATIONS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties")


def merge_lora_adapters(
    model, weights, name, combination="linear", density=None, svd_rank=None, seed=0
):
    """Add adapter `name`, a weighted merge of LoRA adapters of `model`.

    Args:
        model: an `AdapterTextClassifier`.
        weights: dict adapter name -> weight, e.g. `{"a": 0.7, "b": 0.3}`.
        name: the new adapter's name.
        combination: one of `COMBINATIONS` (see module docstring).
        density: fraction of entries kept by TIES/DARE (required there).
        svd_rank: rank of the `"svd"` merge.
        seed: DARE's random pruning seed.

    Returns:
        The new adapter's name (not activated).

    Example:
    ```python
    ka.merge_lora_adapters(model, {"news": 0.7, "spam": 0.3}, "both", combination="cat")
    ```
    """
    sources = _check(model, weights, combination, density)
    _check_numbers(weights, combination, svd_rank)
    configs = [model.adapter_config(n) for n in sources]
    factors = {}  # site path -> (A, B) in float64
    for site in _units(model, sources[0]):
        parts = [(_units(model, n)[site], float(weights[n])) for n in sources]
        factors[site] = _combine(parts, combination, density, svd_rank, seed)
    ranks = {site: a.shape[1] for site, (a, _) in factors.items()}
    rank = next(iter(ranks.values()))
    other = {site: r for site, r in ranks.items() if r != rank}  # where rank_patterns made ranks differ
    first = configs[0]
    config = LoRAConfig(
        rank=rank, alpha=float(rank), dropout=first.dropout,
        target_modules=first.target_modules, target_layers=first.target_layers,
        rank_pattern=other or None, alpha_pattern={site: float(r) for site, r in other.items()} or None,
    )
    head = model.heads[sources[0]]
    model.add_adapter(name, config, **{k: v for k, v in head.task_config().items()})
    for site, unit in _units(model, name).items():
        a, b = factors[site]
        unit.lora_a.assign(a.astype(np.float32))
        unit.lora_b.assign(b.astype(np.float32))
    for target, source in zip(model.heads[name].weights, head.weights):
        target.assign(source)
    return name


def _units(model, name):
    return units_of(model.backbone, name)


def _check(model, weights, combination, density):
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}.")
    if not weights:
        raise ValueError("Pass the adapters to merge as {name: weight}.")
    sources = list(weights)
    configs = [model.adapter_config(n) for n in sources]
    for n, c in zip(sources, configs):
        if not isinstance(c, LoRAConfig):
            raise ValueError(f"Only LoRA adapters can be merged this way; {n!r} is {c.method!r}.")
        if c.use_dora:
            raise ValueError(
                f"{n!r} is a DoRA adapter: its magnitudes rescale whole columns, so it is not a sum of "
                "low-rank updates and cannot be combined this way (merge_adapter folds it in alone)."
            )
    if len({(c.target_modules, c.target_layers) for c in configs}) != 1:
        raise ValueError("The adapters must target the same modules and layers to be merged.")
    if combination not in ("cat", "svd"):
        for site in _units(model, sources[0]):
            ranks = [_units(model, n)[site].rank for n in sources]
            if len(set(ranks)) != 1:
                raise ValueError(
                    f"{combination!r} needs adapters of the same rank (at {site}: {ranks}); use 'cat' or 'svd'."
                )
    if combination in ("ties", "dare_linear", "dare_ties") and not (density and 0 < density <= 1):
        raise ValueError(f"{combination!r} needs density in (0, 1], got {density!r}.")
    return sources


def _check_numbers(weights, combination, svd_rank):
    """Weights that give a finite merge, and a usable SVD rank."""
    for n, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not np.isfinite(w):
            raise ValueError(f"The weight of {n!r} must be a finite number, got {w!r}.")
        if w < 0 and combination not in ("cat", "svd"):
            raise ValueError(
                f"The weight of {n!r} is {w}: {combination!r} takes square roots of the weights, so they "
                "must be >= 0; 'cat' and 'svd' take negative weights (to subtract an adapter)."
            )
    if svd_rank is not None and combination != "svd":
        raise ValueError(f"svd_rank is for combination='svd', not {combination!r}.")
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, (int, np.integer))
                                 or svd_rank < 1):
        raise ValueError(f"svd_rank must be a whole number >= 1, got {svd_rank!r}.")


def _factors(unit):
    a = np.asarray(unit.lora_a.numpy(), np.float64)
    b = np.asarray(unit.lora_b.numpy(), np.float64)
    return a, b, float(unit.scaling)


def _combine(parts, combination, density, svd_rank, seed):
    """(A, B) of the merged update at one site; `parts` = [(unit, weight)]."""
    factors = [(*_factors(u), w) for u, w in parts]
    if combination == "linear":
        a = sum(np.sqrt(w) * s * a for a, b, s, w in factors)
        b = sum(np.sqrt(w) * b for a, b, s, w in factors)
        return a, b
    if combination == "cat":
        return (
            np.concatenate([w * s * a for a, b, s, w in factors], axis=1),
            np.concatenate([b for a, b, s, w in factors], axis=0),
        )
    if combination == "svd":
        delta = sum(w * s * a @ b for a, b, s, w in factors)
        rank = svd_rank or max(a.shape[1] for a, *_ in factors)
        if rank > min(delta.shape):
            raise ValueError(f"svd_rank {rank} is more than this update's {min(delta.shape)} dimensions allow.")
        u, sigma, vt = np.linalg.svd(delta, full_matrices=False)
        return u[:, :rank] * sigma[:rank], vt[:rank]
    scales = np.array([np.sqrt(w * s) for a, b, s, w in factors])
    rng = np.random.default_rng(seed)
    merged = []
    for tensors in ([a for a, *_ in factors], [b for _, b, *_ in factors]):
        stacked = np.stack(tensors)
        if combination == "ties":
            merged.append(_ties(stacked, scales, density))
        elif combination == "dare_linear":
            merged.append(_weighted_sum(_dare(stacked, density, rng), scales))
        else:
            merged.append(_disjoint_merge(_dare(stacked, density, rng), scales))
    return tuple(merged)


def _weighted_sum(stacked, scales):
    return np.tensordot(scales, stacked, axes=1)


def _magnitude_prune(stacked, density):
    """Keep each tensor's `density` fraction of largest-magnitude entries."""
    if density >= 1.0:
        return stacked
    out = np.zeros_like(stacked)
    for i, t in enumerate(stacked):
        k = int(round(density * t.size))
        if k:
            keep = np.argsort(np.abs(t).ravel())[-k:]
            out[i].flat[keep] = t.flat[keep]
    return out


def _dare(stacked, density, rng):
    """Drop entries at random with probability 1 - density, rescale the rest."""
    if density >= 1.0:
        return stacked
    keep = rng.random(stacked.shape) < density
    return np.where(keep, stacked / density, 0.0)


def _disjoint_merge(stacked, scales):
    """TIES' sign election (on the unweighted tensors, peft's 'total'
    method) and the mean of the weighted entries that agree with it."""
    weighted = stacked * scales.reshape((-1,) + (1,) * (stacked.ndim - 1))
    sign = np.where(stacked.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(stacked) == sign
    total = np.where(agree, weighted, 0.0).sum(axis=0)
    count = agree.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _ties(stacked, scales, density):
    return _disjoint_merge(_magnitude_prune(stacked, density), scales)


__all__ = ["COMBINATIONS", "merge_lora_adapters"]
