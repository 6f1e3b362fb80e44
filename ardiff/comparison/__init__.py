"""Matched-compute comparison of generative model families (what experiments/ar_vs_diffusion.py
declares and runs): every family trained from each seed on one FLOP budget, then sampled.

  families   Family (a process kind, its config sections, a label), which families a config
             chooses, the processes they build
  budget     the budget in FLOPs and each family's train-step cost; training every family x seed
             at it (`model_cache.fit_model`)
  scoring    held-out bits (`held_out.test_bpd`), sample scores (FD, precision, recall) as
             mean ± std over seeds, cached sampling, the best spec per NFE
  tables     the quality-vs-NFE rows and series, the training table, quality vs compute
  labels     each spec's series name in the figures
  figures    the metric panels and the training curves
"""
