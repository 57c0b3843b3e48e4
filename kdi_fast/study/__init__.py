"""The study of issue 13: do a student's interactions track how good it is, and does CIP make students better?

  task      the lab task (digit-by-digit addition), its tokenizer and splits
  models    the lab's tiny Llama teacher and two student sizes
  train     the one adapter to kdi_fast.distill that trains every model
  measure   accuracy, agreement, fidelity and interaction scores of one model
  lab       the grid (cells x seeds), resumable, one JSON per run
  analysis  findings with bootstrap intervals and verdicts
  report    findings.json, runs.csv, REPORT.md, plots

Command line: `kdi study lab|report` (kdi_fast.cli.study).
"""
