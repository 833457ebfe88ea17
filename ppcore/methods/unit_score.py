"""The unit score of the methods that score activation energies (pp, fullbatch, ppsp-calib), by the config's
`score`: PPsp (the paper's, docs/algorithm.md §4), or Wanda-sp's or FLAP's metric on the same statistics, the
paper's score ablation (docs/ablations.md)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..adapters import ModelDims
from ..blocks import Block
from ..scores import column_pow4, flap_channels, wanda_sp_channels


def unit_scores(block: Block, score: str, w_fin: Tensor, energy: Tensor, dims: ModelDims, *,
                pow4: Optional[Tensor] = None, fluc: Optional[Tensor] = None) -> Tensor:
    """(U,) scores of the block's units (heads or channels).

    `w_fin` (D_out, C) the final projection's weight; `energy` (C,) the activation energy summed over positions
    (fused with the history where there is one); `pow4` (C,) `column_pow4(w_fin)` when cached; `fluc` (C,) the
    fluctuation, needed by 'flap'. 'ppsp': s_c * ||W[:, c]||_4^2 (heads: L2 within the head); 'wanda-sp':
    ||W[:, c]||_1 * sqrt(s_c) (heads: sum); 'flap': fluc_c * ||W[:, c]||_2^2 (heads: sum). Raises ValueError for
    another score, or 'flap' without `fluc`."""
    if score == "ppsp":
        return block.ppsp(energy, column_pow4(w_fin) if pow4 is None else pow4, dims)
    if score == "wanda-sp":
        return block.unit_scores(wanda_sp_channels(w_fin, energy), dims)
    if score == "flap":
        if fluc is None:
            raise ValueError("the flap score needs the fluctuation")
        return block.unit_scores(flap_channels(w_fin, fluc), dims)
    raise ValueError(f"unknown score {score!r}")
