"""IMTL-G (Liu et al., ICLR 2021), through TorchJD."""

from __future__ import annotations

from .torchjd import TorchJDAggregator


class IMTLG(TorchJDAggregator):
    """IMTL-G (Liu et al. 2021): weights making the update's projection on every unit task gradient equal."""

    def make(self):
        from torchjd.aggregation import IMTLG as TorchJDIMTLG

        return TorchJDIMTLG()
