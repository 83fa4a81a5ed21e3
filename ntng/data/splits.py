"""Named parts of the training windows, decided by each window's stable example id alone.

RHO-LOSS trains its irreducible-loss (IL) model on a 20% hold-out and the main model on the other 80%. The split
is a hash of the example id, so it does not depend on the order of the windows, on the seed, or on which other
windows exist: the IL losses computed once line up with the main run's examples by id, whatever the data order.
"""

from __future__ import annotations

import numpy as np

RHO_HOLDOUT_FRACTION = 0.2  # the IL model's share of the training windows (the paper: a 20% hold-out)

DATA_SPLITS = {
    "full": "every training window",
    "rho_main": f"the {1 - RHO_HOLDOUT_FRACTION:.0%} of training windows outside RHO-LOSS's hold-out",
    "rho_holdout": f"the {RHO_HOLDOUT_FRACTION:.0%} hold-out on which RHO-LOSS's irreducible-loss model trains",
}

# each split in a few words, for labels: `baseline+data_split=rho_main` reads "baseline (on RHO-LOSS's 80%)"
SPLIT_LABELS = {
    "full": "all the training windows",
    "rho_main": f"RHO-LOSS's {1 - RHO_HOLDOUT_FRACTION:.0%}",
    "rho_holdout": f"RHO-LOSS's {RHO_HOLDOUT_FRACTION:.0%} hold-out",
}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_ids(example_ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id: a fixed, well-mixed 64-bit hash (uint64 arithmetic wraps, as the mix intends)."""
    z = np.asarray(example_ids, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def in_holdout(example_ids: np.ndarray, fraction: float = RHO_HOLDOUT_FRACTION) -> np.ndarray:
    """Boolean mask: True for the ids in the hold-out (about `fraction` of them)."""
    assert 0.0 < fraction < 1.0, fraction
    # the hash's top 53 bits as a uniform number in [0, 1)
    uniform = (hash_ids(example_ids) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return uniform < fraction


def select_split(example_ids: np.ndarray, windows: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (ids, windows) of `split` (one of DATA_SPLITS), in their original order."""
    assert split in DATA_SPLITS, split
    if split == "full":
        return example_ids, windows
    mask = in_holdout(example_ids)
    keep = mask if split == "rho_holdout" else ~mask
    return example_ids[keep], windows[keep]
