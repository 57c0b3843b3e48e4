"""Losses: the KD divergences (kd) and the Complex Interaction Penalty (cip)."""

from .cip import CIP, CIPRecord
from .kd import DIVERGENCES, HiddenStateL2, KDLoss, KDLossOutput, kd_loss

__all__ = ["CIP", "CIPRecord", "DIVERGENCES", "HiddenStateL2", "KDLoss", "KDLossOutput", "kd_loss"]
