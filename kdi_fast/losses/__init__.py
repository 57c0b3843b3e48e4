"""Losses: the KD divergences (kd) and the Complex Interaction Penalty (cip)."""

from .kd import DIVERGENCES, HiddenStateL2, KDLoss, KDLossOutput, kd_loss

__all__ = ["DIVERGENCES", "HiddenStateL2", "KDLoss", "KDLossOutput", "kd_loss"]
