"""The distillation methods: which responses each one trains on, and which loss it applies to them.

  method   responses trained on                                        loss (kdi_fast.losses.kd_loss)
  sft      the data's reference responses                              cross-entropy with the reference
  kd       the data's reference responses                              forward KL(teacher || student)
  rkl      the data's reference responses                              reverse KL(student || teacher) (MiniLLM's
                                                                       divergence, without its policy gradient)
  abkd     the data's reference responses                              alpha-beta divergence (ABKD)
  seqkd    the teacher's greedy outputs, generated once and cached     cross-entropy with the teacher's output
  gkd      student samples with probability `student_share` per batch, generalised JSD(beta) (GKD)
           else the references
  imitkd   student samples with probability rising linearly from 0     forward KL (ImitKD, simplified: a batch is
           to 1 over the run, else the references                      wholly student- or data-generated)
  distillm student samples with the adaptive probability of            skewed reverse KL(alpha) (DistiLLM)
           AdaptiveSGOSchedule, drawn from a replay buffer or freshly
           generated; else the references
  minillm  samples of the teacher-mixed distribution, every step         MiniLLM's policy gradient of the sequence-
                                                                       level reverse KL + LM loss on the references
                                                                       (kdi_fast.distill.minillm)

The on-policy coin of a step is drawn from (seed, step) and each sample from a generator seeded by (seed, example,
step), so that neither depends on the number of processes or on where a run was resumed.

Temperature and teacher-logit noise apply to every loss that uses the teacher's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS", "get_method"]


@dataclass(frozen=True)
class Method:
    name: str
    divergence: str  # a kdi_fast.losses.kd_loss divergence
    responses: str  # "data" | "teacher" | "student_share" | "student_ramp" | "adaptive" | "teacher_mixed"

    @property
    def uses_teacher_logits(self) -> bool:
        return self.divergence != "cross_entropy"

    @property
    def on_policy(self) -> bool:
        return self.responses in ("student_share", "student_ramp", "adaptive", "teacher_mixed")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "cross_entropy", "data"),
    Method("kd", "forward_kl", "data"),
    Method("rkl", "reverse_kl", "data"),
    Method("abkd", "ab", "data"),
    Method("seqkd", "cross_entropy", "teacher"),
    Method("gkd", "jsd", "student_share"),
    Method("imitkd", "forward_kl", "student_ramp"),
    Method("distillm", "skew_reverse_kl", "adaptive"),
    Method("minillm", "reverse_kl", "teacher_mixed"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
