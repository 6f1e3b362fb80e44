"""Mutation check: does the test suite catch plausible one-line bugs in the maths?

    python tools/mutants.py               # every mutant, one at a time
    python tools/mutants.py --list        # the mutants and the tests that should catch them
    python tools/mutants.py ddim eta      # only mutants whose name contains one of the words
    python tools/mutants.py --jobs 2      # two at a time (each pytest already uses 2 threads)

Each mutant is one exact text replacement in one file (a wrong sign, a dropped factor,
an off-by-one, a swapped coefficient). For each, the repository's tracked and untracked files
are copied to a temporary folder, the replacement is applied there (it must match exactly once,
so a mutant whose line has moved fails loudly instead of silently testing nothing), and the
tests that cover that code run against the copy. A mutant is "caught" when pytest reports a
failing test (exit code 1); any other outcome (passing, or a collection / import error) is
"NOT CAUGHT" or "ERROR". The script prints one row per mutant and exits 1 unless every mutant
is caught; the last column names the test that failed first. Not run in CI (the 24 sampler,
schedule and diffusion-loss mutants alone take about 20 minutes on 2 cores); run it after
changing the maths or the tests, and add a mutant whenever you add numerical code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  area: str
  path: str  # relative to the repo root
  old: str
  new: str
  tests: tuple[str, ...]  # pytest arguments: files, node ids, or "-k" expressions


def _m(name, area, path, old, new, *tests):
  return Mutant(name, area, path, old, new, tuple(tests))


D, TRAIN, AR, BUDGET = ("tests/processes/gaussian/test_diffusion.py", "tests/train/test_train.py",
                        "tests/processes/autoregressive/test_autoregressive.py", "tests/processes/autoregressive/test_budget.py")
S, INPAINT = "tests/processes/gaussian/test_solvers.py", "tests/processes/gaussian/test_inpaint.py"
WEIGHTS = "tests/processes/gaussian/test_multistep_weights.py"
SAMPLERS = "ardiff/processes/gaussian/samplers/"
EXACT_LAW = f"{D}::test_sampler_output_has_its_exact_gaussian_law"
BAYES_RISK = f"{D}::test_loss_of_the_exact_model_is_the_bayes_risk"
ORDER = f"{S}::test_solver_converges_to_the_exact_flow_or_law"
BEATS_DDIM = f"{S}::test_second_order_solvers_beat_ddim_at_ten_evaluations"
EULER_A_IS_DDIM = f"{S}::test_euler_ancestral_is_ddim_with_the_same_eta_on_the_same_grid"
CONTINUOUS_TIME = (f"{S}::test_continuous_schedule_interpolates_log_snr_between_training_steps",
                   f"{S}::test_spacings_follow_their_formulas")
RUNTIME = "tests/test_bad_inputs_runtime.py"
BAD_CLI = "tests/test_bad_inputs.py::test_bad_cli_input_is_one_line_and_changes_nothing"
KERNEL_DECODE = "tests/kernels/test_decode_attention.py"
SEGMENTS = f"{KERNEL_DECODE}::test_prefix_segments_tile_the_steps_with_caches_that_hold_them"
SEGMENTED_DECODE = f"{AR}::test_kv_cache_sampler_by_segments_equals_no_cache_sampler"
KERNEL_ATTENTION = "tests/kernels/test_attention.py"
MASK = "tests/kernels/test_attention_mask.py"
BLOCK_AR = ("tests/models/test_transformer.py::"
            "test_blockwise_ar_decodes_block_by_block_as_the_full_forward")
TWO_COPIES = ("tests/models/test_transformer.py::"
              "test_block_diffusion_two_copy_forward_is_decoding_clean_blocks_then_a_noised_one")
MUTANTS = (
    # ---- diffusion samplers (the solver protocol of samplers/base.py; x~ = x / sqrt(ab))
    _m("ddim-variance-drops-(1-sigma_s^2/sigma_t^2)", "samplers", SAMPLERS + "ddim.py",
       "var = args[\"eta\"] ** 2 * sigma_s**2 * jnp.maximum(1.0 - (sigma_s / sigma_t) ** 2, 0.0)",
       "var = args[\"eta\"] ** 2 * sigma_s**2", EXACT_LAW, EULER_A_IS_DDIM),
    _m("ddim-direction-ignores-the-noise-variance", "samplers", SAMPLERS + "ddim.py",
       "jnp.sqrt(jnp.maximum(sigma_s**2 - var, 0.0)) * d.eps", "sigma_s * d.eps", EXACT_LAW,
       EULER_A_IS_DDIM),
    # The forward (noising) increment's variance from s to t instead of the posterior's: what
    # the one-step "beta" variance becomes on strided steps.
    _m("ddpm-forward-variance-not-posterior-on-strides", "samplers", SAMPLERS + "ddpm.py",
       "noise * sigma_s * jnp.sqrt(1.0 - ratio2) * z",
       "noise * jnp.sqrt(sigma_t**2 - sigma_s**2) * z", EXACT_LAW),
    _m("ddpm-posterior-mean-coefficient-not-squared", "samplers", SAMPLERS + "ddpm.py",
       "ratio2 * (ctx.to_scaled(x, t) - d.x0)", "jnp.sqrt(ratio2) * (ctx.to_scaled(x, t) - d.x0)",
       EXACT_LAW),
    _m("denoise-x0-forgets-1/sqrt(ab)", "samplers", SAMPLERS + "base.py",
       "return Denoised(x * jnp.sqrt(1.0 + sigma**2) - sigma * eps, eps, frac)",
       "return Denoised(x - sigma * eps, eps, frac)", EXACT_LAW, ORDER),
    _m("diffusion-noise-reused-every-step", "samplers", SAMPLERS + "base.py",
       "x, state = solver.step(ctx, state, x, t, s, randomness.step_keys(keys, i), args)",
       "x, state = solver.step(ctx, state, x, t, s, randomness.step_keys(keys, 0), args)",
       EXACT_LAW, ORDER),
    _m("dpmpp-2m-correction-sign", "samplers", SAMPLERS + "dpm_solver_pp.py",
       "first + 0.5 * (1.0 - r) * d1_0", "first - 0.5 * (1.0 - r) * d1_0", ORDER, BEATS_DDIM),
    # r0 = 1 on DPM-Solver's default log-SNR grid, so only a non-uniform grid shows this one
    # (tests/peers' trailing grid does: 1 failed there).
    _m("dpmpp-r0-inverted", "samplers", SAMPLERS + "dpm_solver_pp.py",
       "d1_0 = (m0 - m1) / r0", "d1_0 = (m0 - m1) * r0",
       f"{S}::test_dpm_solver_2m_matches_the_papers_algorithm_on_non_uniform_steps", ORDER),
    _m("dpmpp-3m-d2-sign", "samplers", SAMPLERS + "dpm_solver_pp.py",
       "- ((em1 + h) / h**2 - 0.5) * d2", "+ ((em1 + h) / h**2 - 0.5) * d2", ORDER, BEATS_DDIM),
    # r0 = r1 on the default log-SNR grid, so only an uneven grid shows the swap.
    _m("dpmpp-3m-d1-ratio-swapped", "samplers", SAMPLERS + "dpm_solver_pp.py",
       "d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)", "d1 = d1_0 + r1 / (r0 + r1) * (d1_0 - d1_1)",
       f"{WEIGHTS}::test_dpm_solver_3m_matches_the_papers_algorithm_on_uneven_steps", ORDER),
    # UniC-1 corrects only the second step of UniPC-2: invisible to the order and to the
    # beat-DDIM tests, only the transcription sees it.
    _m("unipc-corrector-weight-1-not-1/2", "samplers", SAMPLERS + "unipc.py",
       "res = {1: 0.5 * d[2],", "res = {1: 1.0 * d[2],",
       f"{WEIGHTS}::test_unipc_matches_the_papers_algorithm_on_uneven_steps", ORDER),
    _m("heun-weights-d-and-d'-1-and-0", "samplers", SAMPLERS + "heun.py",
       "(sigma_s - sigma_hat) * 0.5 * (d + d_next)",
       "(sigma_s - sigma_hat) * (1.0 * d + 0.0 * d_next)", ORDER, BEATS_DDIM),
    _m("heun-churn-std-sigma_hat^2+sigma_t^2", "samplers", SAMPLERS + "heun.py",
       "churn_std = jnp.sqrt(jnp.maximum((sigma_hat - sigma_t) * (sigma_hat + sigma_t), 0.0))",
       "churn_std = jnp.sqrt(sigma_hat**2 + sigma_t**2)", ORDER,
       f"{S}::test_heun_with_churn_is_stochastic_and_still_converges_in_law"),
    _m("euler-a-sigma-up-without-eta", "samplers", SAMPLERS + "euler_ancestral.py",
       "args[\"eta\"] * sigma_s * jnp.sqrt(", "sigma_s * jnp.sqrt(",
       EULER_A_IS_DDIM, ORDER),
    _m("karras-spacing-1/rho-for-rho", "samplers", SAMPLERS + "spacing.py",
       "np.linspace(hi, lo, n) ** KARRAS_RHO", "np.linspace(hi, lo, n) ** (1 / KARRAS_RHO)",
       f"{S}::test_spacings_follow_their_formulas"),
    # Inverting to another noise level than the one sampling starts from (sigma_max, spacing):
    # at sigma_max = 80 the VP state barely moves with sigma, so only a small sigma_max shows it.
    _m("invert-ignores-spacing-and-sigma_max", "samplers", SAMPLERS + "inversion.py",
       "times = sampling_times(schedule, sampler, num_steps, options)[::-1].copy()",
       "times = sampling_times(schedule, sampler, num_steps)[::-1].copy()",
       f"{S}::test_inversion_honours_sigma_max_against_the_exact_inverse_flow"),
    _m("inpaint-replaces-at-the-noise-level-of-t-not-s", "samplers", SAMPLERS + "base.py",
       "return hook(x, s, i, hook_args), state", "return hook(x, t, i, hook_args), state",
       INPAINT),
    # The step count as data (samplers/base.py): the padded loop runs n steps where the last
    # one is the separate final step, so it steps to t = 0 twice (the tail off by one).
    _m("padded-loop-also-runs-the-final-step", "samplers", SAMPLERS + "base.py",
       "carry = jax.lax.fori_loop(0, looped, loop_body, carry)",
       "carry = jax.lax.fori_loop(0, n, loop_body, carry)",
       f"{S}::test_scan_and_python_loop_agree_to_the_last_bits"),
    _m("cfg-extrapolates-from-the-conditional-stream", "samplers", "ardiff/processes/guidance.py",
       "return neg + jnp.asarray(w, out.dtype) * (cond - neg)",
       "return cond + jnp.asarray(w, out.dtype) * (cond - neg)", "tests/processes/test_guidance.py",
       D, AR),
    # ---- schedules
    _m("cosine-schedule-forgets-/(1+s)", "schedules", "ardiff/processes/gaussian/schedules.py",
       "f = np.cos((steps + offset) / (1 + offset) * np.pi / 2) ** 2",
       "f = np.cos((steps + offset) * np.pi / 2) ** 2", D),
    _m("linear-schedule-rescales-one-endpoint", "schedules", "ardiff/processes/gaussian/schedules.py",
       "np.linspace(scale * 1e-4, scale * 0.02, num_timesteps)",
       "np.linspace(1e-4, scale * 0.02, num_timesteps)", D),
    # continuous time: log-SNR linear between training steps, and its inverse
    _m("sigma-at-log-snr-frac-sign", "schedules", "ardiff/processes/gaussian/schedules.py",
       "var_log = jnp.exp(-(lo + frac * (hi - lo)))", "var_log = jnp.exp(-(lo - frac * (hi - lo)))",
       *CONTINUOUS_TIME),
    _m("sigma-at-interpolates-alpha-bar-linearly", "schedules",
       "ardiff/processes/gaussian/schedules.py", "var_log = jnp.exp(-(lo + frac * (hi - lo)))",
       "var_log = 1.0 / (self.alpha_bars[i] + frac * (self.alpha_bars[i + 1] - self.alpha_bars[i]))"
       " - 1.0", *CONTINUOUS_TIME),
    # (`rising` starts at t = 1, so reading its index j as the time step j + 1 looks right.)
    _m("time-at-sigma-off-by-one-grid-index", "schedules", "ardiff/processes/gaussian/schedules.py",
       "u_log = (j + (lo - lam) / (lo - hi)) / num",
       "u_log = (j + 1 + (lo - lam) / (lo - hi)) / num",
       *CONTINUOUS_TIME),
    # ---- diffusion loss and targets
    _m("loss-draws-t-from-0..T-1", "loss", "ardiff/processes/gaussian/process.py",
       "t = jax.random.randint(k_t, (x0.shape[0],), 1, self.num_timesteps + 1)",
       "t = jax.random.randint(k_t, (x0.shape[0],), 0, self.num_timesteps)", BAYES_RISK),
    _m("v-target-sign", "loss", "ardiff/processes/gaussian/targets.py",
       "return x_t, jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0",
       "return x_t, jnp.sqrt(ab) * eps + jnp.sqrt(1 - ab) * x0", BAYES_RISK),
    _m("clip-x0-lower-bound", "loss", "ardiff/processes/gaussian/process.py",
       "-self.clip_x0, self.clip_x0)", "-1.0, self.clip_x0)",
       f"{D}::test_clip_x0_clips_the_implied_x0_and_nothing_else"),
    _m("label-drop-keeps-dropped-labels", "loss", "ardiff/processes/gaussian/process.py",
       "jax.random.bernoulli(k_drop, self.p_uncond, y.shape), self.null_label, y)",
       "jax.random.bernoulli(k_drop, 1 - self.p_uncond, y.shape), self.null_label, y)",
       f"{D}::test_label_dropping_at_p_uncond_one_trains_the_null_label"),
    # next_step's x0 comes from the posterior mean c0 x0 + ct x_t (targets.py; no sampler uses
    # it). A check must take that mean from its own formula: one built with the library's
    # posterior_from_alpha_bars cancels the bug.
    _m("next-step-target-posterior-mean-without-sqrt", "loss",
       "ardiff/processes/gaussian/targets.py", "ct = jnp.sqrt(a_ts) * (1.0 - ab_s) / (1.0 - ab_t)",
       "ct = a_ts * (1.0 - ab_s) / (1.0 - ab_t)",
       f"{D}::test_exact_target_prediction_recovers_true_eps", BAYES_RISK),
    # Points are standardised for the model: to_data must undo to_model (scale, then center).
    _m("to-data-adds-the-center-before-scaling", "data space", "ardiff/processes/gaussian/process.py",
       """      if self.data_scale is not None:
        x = x * jnp.asarray(self.data_scale, x.dtype)
      if self.data_center is not None:
        x = x + jnp.asarray(self.data_center, x.dtype)
""", """      if self.data_center is not None:
        x = x + jnp.asarray(self.data_center, x.dtype)
      if self.data_scale is not None:
        x = x * jnp.asarray(self.data_scale, x.dtype)
""", f"{D}::test_point_standardisation_round_trips_and_reaches_the_network"),
    # ---- bounds
    _m("diffusion-bound-kl-weight-without-alpha_t", "bounds", "ardiff/processes/gaussian/likelihood.py",
       "weight = beta / ((1.0 - beta) * bcast(",
       "weight = beta / ((1.0) * bcast(",
       "tests/processes/gaussian/test_likelihood.py"),
    _m("ardm-weight-L/(L-t+1)", "bounds", "ardiff/processes/autoregressive/objectives.py",
       "return length / n_hidden * jnp.where(hidden, nll, 0.0).sum(axis=-1)",
       "return length / (n_hidden + 1) * jnp.where(hidden, nll, 0.0).sum(axis=-1)", AR),
    _m("ardm-never-draws-nothing-revealed", "bounds", "ardiff/processes/autoregressive/objectives.py",
       "t = jax.random.randint(k_t, (batch, 1), 0, length)",
       "t = jax.random.randint(k_t, (batch, 1), 1, length)", AR),
    _m("raster-nll-averages-positions", "bounds", "ardiff/processes/autoregressive/objectives.py",
       "return token_nll(logits, x).sum(axis=-1)", "return token_nll(logits, x).mean(axis=-1)",
       AR),
    # ---- autoregressive decoding
    _m("temperature-multiplies-logits", "AR decoding", "ardiff/processes/categorical.py",
       "logits.astype(jnp.float32) / temperature", "logits.astype(jnp.float32) * temperature",
       AR),
    _m("ar-guidance-negative-stream-is-class-0", "AR decoding", "ardiff/processes/guidance.py",
       "neg = null_label if guidance.negative is None",
       "neg = 0 if guidance.negative is None",
       f"{AR}::test_raster_sampler_chi_square_temperature_and_guidance"),
    # MaskGIT anneals the choice noise from c (1 - 1/S) to 0; reversed, it grows to c. At
    # S = 2 both give c / 2 at step 0: the test reads the reveal order's law at S = 4.
    _m("confidence-noise-annealed-the-wrong-way", "AR decoding",
       "ardiff/processes/autoregressive/confidence.py",
       "scale = noise * (1.0 - (s + 1) / num_steps)", "scale = noise * ((s + 1) / num_steps)",
       "tests/processes/autoregressive/test_confidence.py::"
       "test_noise_is_annealed_from_large_to_zero_in_the_law_of_the_reveal_order"),
    _m("kv-cache-feeds-the-current-position", "AR decoding", "ardiff/processes/autoregressive/decode.py",
       "jnp.maximum(pos - 1, 0)", "jnp.maximum(pos, 0)", AR),
    # The raster cache by segments (decode_attention.prefix_segments, decode._grown): a
    # segment's cache must hold every slot its steps write, and growing it must keep the filled
    # slots where they are.
    _m("segment-cache-sized-by-its-first-step", "AR decoding",
       "ardiff/kernels/decode_attention.py", "min(start + segment, full))",
       "min(cache_length(start + 1), full))", SEGMENTS, SEGMENTED_DECODE),
    _m("grown-cache-padded-in-front", "AR decoding", "ardiff/processes/autoregressive/decode.py",
       "(0, slots - a.shape[2])", "(slots - a.shape[2], 0)", SEGMENTED_DECODE),
    # (Dropping "& ~known_mask" from the parallel decoder's update is an equivalent mutant:
    # order_agnostic_sample rejects plans that reveal known positions, so it cannot differ.)
    _m("ardm-contiguous-and-random-orders-swapped", "AR decoding",
       "ardiff/processes/token_samplers/ardm.py",
       'if spec.get("order", "random") == "contiguous":',
       'if spec.get("order", "random") != "contiguous":',
       f"{AR}::test_ardm_specs_follow_their_plans"),
    # The ARDM plan as data: a trip count one short leaves the last step's positions hidden.
    _m("ardm-loop-skips-the-last-step", "AR decoding", "ardiff/processes/autoregressive/decode.py",
       "return jax.lax.fori_loop(0, num_steps, step, tokens)",
       "return jax.lax.fori_loop(0, num_steps - 1, step, tokens)",
       f"{AR}::test_order_agnostic_sampler_distribution"),
    # ---- DP budgets
    _m("budget-allows-empty-steps", "budgets", "ardiff/processes/autoregressive/budget.py",
       "step_cost = np.where(t[None, :] > t[:length, None],",
       "step_cost = np.where(t[None, :] >= t[:length, None],", BUDGET),
    _m("budget-cost-reads-the-loss-after-the-step", "budgets", "ardiff/processes/autoregressive/budget.py",
       "return float(np.dot(sizes, losses[starts]))",
       "return float(np.dot(sizes, losses[np.minimum(starts + 1, losses.size - 1)]))", BUDGET),
    # ---- training, EMA, resume
    _m("ema-decay-swapped", "training", "ardiff/train/step.py",
       "d * e + (1.0 - d) * p", "(1.0 - d) * e + d * p", TRAIN),
    _m("ema-warmup-counts-this-update", "training", "ardiff/train/step.py",
       "(1.0 + n) / (10.0 + n))", "(2.0 + n) / (11.0 + n))", TRAIN),
    _m("ema-warmup-ratio-inverted", "training", "ardiff/train/step.py",
       "(1.0 + n) / (10.0 + n))", "(10.0 + n) / (1.0 + n))", TRAIN),
    _m("ema-warmup-not-capped-by-the-decay", "training", "ardiff/train/step.py",
       "jnp.minimum(jnp.float32(ema_decay), (1.0 + n) / (10.0 + n))",
       "(1.0 + n) / (10.0 + n)", TRAIN),
    _m("ema-tracks-the-pre-update-params", "training", "ardiff/train/step.py",
       "state.ema_params, params)", "state.ema_params, state.params)", TRAIN),
    _m("resume-restarts-the-step-keys", "training", "ardiff/train/loop.py",
       "jax.random.fold_in(loop_key, step))", "jax.random.fold_in(loop_key, step - start))", TRAIN),
    _m("batches-ignore-the-epoch", "training", "ardiff/data/base.py",
       "perm = np.random.default_rng([seed, int(epoch)]).permutation(n)",
       "perm = np.random.default_rng([seed, 0]).permutation(n)", TRAIN),
    # ---- metrics
    _m("frechet-cross-term-once", "metrics", "ardiff/metrics/frechet.py",
       "np.trace(cov2) - 2.0 * cross)", "np.trace(cov2) - cross)", "tests/metrics/test_frechet.py"),
    _m("frechet-cross-term-of-S1-S2-symmetrised", "metrics", "ardiff/metrics/frechet.py",
       "a = root1 @ cov2 @ root1", "a = cov1 @ cov2", "tests/metrics/test_frechet.py"),
    _m("sliced-wasserstein-quantile-off-by-one", "metrics", "ardiff/metrics/points.py",
       "pos = q * (len(x) - 1)", "pos = q * len(x)", "tests/metrics/test_points.py"),
    _m("held-out-bits-count-the-padding", "metrics", "ardiff/metrics/held_out.py",
       "bits[:min(batch_size, n - start)]", "bits",
       "tests/metrics/test_held_out.py::test_batches_keep_every_example_once_with_one_compiled_"
       "program"),
    _m("upscale-bound-one-order-for-every-stage", "upscale",
       "ardiff/processes/autoregressive/upscale.py",
       "orders.random_orders(jax.random.fold_in(key, s), x.shape[0],",
       "orders.random_orders(key, x.shape[0],",
       "tests/metrics/test_held_out.py::test_test_bpd_equals_each_processes_held_out_bits_"
       "written_out[upscale]"),
    # ---- [4/7] seed-claim processes (caught when applied by hand; tests named per file)
    _m("fixed-order-reveals-x_t-itself", "autoregressive",
       "ardiff/processes/autoregressive/bidirectional_raster.py", "[None, :] < t[:, None]",
       "[None, :] <= t[:, None]", "tests/processes/autoregressive/test_bidirectional_raster.py"),
    _m("fixed-order-never-trains-step-0", "autoregressive",
       "ardiff/processes/autoregressive/bidirectional_raster.py",
       "jax.random.randint(key, (b,), 0, length)",
       "jax.random.randint(key, (b,), 1, length)",
       "tests/processes/autoregressive/test_bidirectional_raster.py"),
    _m("learned-variance-fraction-swapped", "learned_variance",
       "ardiff/processes/gaussian/likelihood.py", "d = frac * bcast",
       "d = (1 - frac) * bcast", "tests/processes/gaussian/test_learned_variance.py"),
    _m("learned-variance-vlb-trains-the-mean", "learned_variance",
       "ardiff/processes/gaussian/learned_variance.py", "frozen = jax.lax.stop_gradient(eps_hat)",
       "frozen = eps_hat", "tests/processes/gaussian/test_learned_variance.py"),
    _m("learned-ddpm-scale-not-a-square-root", "learned_variance",
       SAMPLERS + "ddpm_learned.py", "scale = jnp.exp(0.5 * d.frac", "scale = jnp.exp(d.frac",
       "tests/processes/gaussian/test_learned_variance.py"),
    # ---- step histories of the Gaussian and one-shot processes (data space, one shape)
    _m("gaussian-history-left-in-model-space", "history", "ardiff/processes/gaussian/process.py",
       "return np.asarray(self.to_data_floats(trajectory), np.float32)",
       "return np.asarray(trajectory, np.float32)", "tests/processes/gaussian/test_history.py"),
    _m("level-scale-drops-(L-1)", "history", "ardiff/data/levels.py",
       "(x + 1.0) / 2.0 * (num_levels - 1), 0, num_levels - 1)",
       "(x + 1.0) / 2.0 * num_levels, 0, num_levels - 1)",
       "tests/processes/test_oneshot.py::"
       "test_sample_history_is_one_unrounded_step_ending_in_the_sample"),
    # ---- [6/7] upscale ARDM, step histories, sample cache (each caught when applied by hand)
    _m("upscale-weight-drops-the-stage-count", "upscale",
       "ardiff/processes/autoregressive/upscale.py",
       "scale = layout.num_stages * x.shape[-1] / todo.sum(axis=-1)",
       "scale = x.shape[-1] / todo.sum(axis=-1)",
       "tests/processes/autoregressive/test_upscale.py"),
    _m("upscale-unrefined-pixels-shown-at-the-new-stage", "upscale",
       "ardiff/processes/autoregressive/upscale.py",
       "tokens = layout.tokens(x, jnp.where(refined, s, s - 1))", "tokens = layout.tokens(x, s)",
       "tests/processes/autoregressive/test_upscale.py"),
    _m("hidden-pixels-drawn-as-zero", "autoregressive",
       "ardiff/processes/token_samplers/base.py", "jnp.where(hidden, jnp.nan,",
       "jnp.where(hidden, 0.0,",
       "tests/processes/test_contract.py::test_step_history_ends_in_the_sample"),
    _m("plan-history-one-step-late", "autoregressive",
       "ardiff/processes/token_samplers/base.py", "~(reveal_step[None] <= step)",
       "~(reveal_step[None] < step)",
       "tests/processes/test_contract.py::test_step_history_ends_in_the_sample"),
    _m("sample-cache-ignores-the-key", "report", "ardiff/sample_cache.py",
       "  h.update(np.asarray(jax.random.key_data(key)).tobytes())\n", "",
       "tests/test_sample_cache.py"),
    # ---- attention kernels (checked in Pallas's interpreter against float64 attention)
    _m("tpu-decode-reads-one-slot-past-the-filled", "kernels", "ardiff/kernels/decode_attention.py",
       "s = jnp.where(position < filled, s, -jnp.inf)",
       "s = jnp.where(position <= filled, s, -jnp.inf)", KERNEL_DECODE),
    _m("gpu-decode-lengths-tiled-not-repeated-per-head", "kernels",
       "ardiff/kernels/decode_attention.py", "kv_seq_len=jnp.repeat(filled, heads)",
       "kv_seq_len=jnp.tile(filled, heads)", KERNEL_DECODE),
    _m("flash-padding-in-the-real-segment", "kernels", "ardiff/kernels/attention.py",
       "(jnp.arange(to) < length).astype(jnp.int32)",
       "(jnp.arange(to) <= length).astype(jnp.int32)", KERNEL_ATTENTION),
    _m("chunked-backward-drops-the-row-sum", "kernels", "ardiff/kernels/attention.py",
       "ds = p * (jnp.einsum(\"bqnh,bknh->bnqk\", g32, values) - d_chunk.transpose(0, 2, 1)[..., None])",
       "ds = p * jnp.einsum(\"bqnh,bknh->bnqk\", g32, values)", KERNEL_ATTENTION),
    # ---- attention by blocks (kernels.attention_mask, the masked kernels, decode_block)
    _m("block-mask-noised-block-sees-its-clean-copy", "kernels",
       "ardiff/kernels/attention_mask.py", "((k_block < q_block) & (k_copy == 0))",
       "((k_block <= q_block) & (k_copy == 0))", MASK, TWO_COPIES),
    _m("block-causal-ids-shifted-by-one", "kernels", "ardiff/kernels/attention_mask.py",
       "tuple(i // block_size for i in range(length))",
       "tuple((i + 1) // block_size for i in range(length))", MASK, BLOCK_AR),
    _m("chunked-skips-partly-seen-key-tiles", "kernels", "ardiff/kernels/attention_mask.py",
       ".any(axis=(1, 3))", ".all(axis=(1, 3))", KERNEL_ATTENTION, "-k", "masked_attention"),
    _m("splash-unscaled-scores", "kernels", "ardiff/kernels/attention.py",
       "scaled = (heads_first(q) * (1.0 / float(dim) ** 0.5)).astype(q.dtype)",
       "scaled = heads_first(q)", KERNEL_ATTENTION, "-k", "masked_attention"),
    _m("block-decode-sees-an-unfilled-slot", "kernels", "ardiff/kernels/decode_attention.py",
       "s = jnp.where(slot < filled[:, None, None, None], s, -jnp.inf)",
       "s = jnp.where(slot <= filled[:, None, None, None], s, -jnp.inf)",
       f"{KERNEL_DECODE}::test_a_block_of_queries_is_softmax_attention_over_the_filled_prefix"),
    _m("block-decode-writes-over-the-class-slot", "kernels", "ardiff/models/transformer.py",
       "first = start if self.causal else start + 1", "first = start", TWO_COPIES),
    _m("block-decode-block-misses-its-last-position", "kernels", "ardiff/models/transformer.py",
       "filled = jnp.full((b,), pos + count, jnp.int32)",
       "filled = jnp.full((b,), pos + count - 1, jnp.int32)", BLOCK_AR),
    _m("steps-for-nfe-one-step-short", "samplers", f"{SAMPLERS}base.py",
       "return (nfe_budget - solver.final_evals) // solver.evals_per_step + 1",
       "return (nfe_budget - solver.final_evals) // solver.evals_per_step",
       f"{S}::test_steps_for_nfe_inverts_nfe"),
    # ---- experiment measurements moved into the library (metrics.same_law, .completion)
    _m("permutation-test-counts-only-larger-gaps", "metrics", "ardiff/metrics/same_law.py",
       "np.sum(null >= observed)", "np.sum(null > observed)", "tests/metrics/test_same_law.py"),
    _m("same-law-floor-pairs-a-seed-with-itself", "metrics", "ardiff/metrics/same_law.py",
       "nxt = [(i + 1) % seeds for i in range(seeds)]", "nxt = list(range(seeds))",
       "tests/metrics/test_same_law.py"),
    _m("completion-error-over-the-known-pixels", "metrics", "ardiff/metrics/completion.py",
       "error[~mask].mean()", "error[mask].mean()", "tests/metrics/test_completion.py"),
    _m("completion-error-wraps-around-in-uint8", "metrics", "ardiff/metrics/completion.py",
       "error = np.abs(out.astype(np.int64) - x.astype(np.int64))", "error = np.abs(out - x)",
       "tests/metrics/test_completion.py"),
    _m("fit-cached-drops-the-kept-budget-from-the-key", "model cache", "ardiff/model_cache.py",
       "train_key(train_cfg, keep_steps=keep_steps)", "train_key(train_cfg)",
       "tests/test_fit_cached.py"),
    _m("token-sampler-taken-on-any-overlap", "AR decoding",
       "ardiff/processes/token_samplers/base.py",
       "if set(TOKEN_SAMPLERS.get(name).requires) <= set(provides))",
       "if set(TOKEN_SAMPLERS.get(name).requires) & set(provides))",
       "tests/processes/test_contract.py", "-k", "ardm and not device_count"),
    _m("best-per-nfe-keeps-the-worse-sampler", "comparison", "ardiff/comparison/scoring.py",
       'r["fd"] < best[r["NFE"]]["fd"]', 'r["fd"] > best[r["NFE"]]["fd"]',
       "tests/comparison/test_comparison.py"),
    _m("best-per-nfe-ignores-the-pareto-front", "comparison", "ardiff/comparison/scoring.py",
       'if r["NFE"] in front and', 'if', "tests/comparison/test_comparison.py"),
    _m("flop-budget-from-the-costliest-family", "comparison", "ardiff/comparison/budget.py",
       "return c.budget_steps * per_step[c.budget_reference]",
       "return c.budget_steps * max(per_step.values())", "tests/comparison/test_comparison.py"),
    _m("mean-std-over-seeds-drops-the-last-seed", "comparison", "ardiff/comparison/scoring.py",
       "mean_std([s[metric] for s in scores])", "mean_std([s[metric] for s in scores[:-1]])",
       "tests/comparison/test_comparison.py"),
    _m("reveal-row-shows-each-stride-start-not-end", "report", "ardiff/report/reveal.py",
       ".astype(int)[1:] - 1]", ".astype(int)[:-1]]", "tests/comparison/test_comparison.py"),
    _m("measured-peak-counts-n-squared", "bench", "ardiff/bench/train.py",
       "return (lambda: dot(a, b)), 2.0 * n ** 3", "return (lambda: dot(a, b)), 2.0 * n ** 2",
       "tests/bench/test_bench.py", "-k", "peak_row or measured_peak"),
    _m("measured-peak-from-the-fastest-repeat", "bench", "ardiff/bench/train.py",
       "rate = flops / timing.median", "rate = flops / timing.min",
       "tests/bench/test_bench.py", "-k", "peak_row or measured_peak"),
    # ---- the straight-line Threefry lowering on the CPU (ardiff/threefry_cpu.py)
    _m("threefry-key-injection-counter-off-by-one", "random bits", "ardiff/threefry_cpu.py",
       "np.uint32(block + 1)", "np.uint32(block)", "tests/test_threefry_cpu.py"),
    _m("threefry-rotation-sets-swapped", "random bits", "ardiff/threefry_cpu.py",
       "for r in ROTATIONS[block % 2]:", "for r in ROTATIONS[(block + 1) % 2]:",
       "tests/test_threefry_cpu.py"),
    _m("threefry-own-lowering-restores-ours", "random bits", "ardiff/threefry_cpu.py",
       '  _put(table, threefry2x32_p, _ENTRIES["jax"])\n  try:',
       '  _put(table, threefry2x32_p, _ENTRIES["ours"])\n  try:',
       "tests/test_threefry_cpu.py", "-k", "flop_counts"),
    _m("flops-counted-on-the-straight-line-program", "random bits", "ardiff/train/programs.py",
       "with threefry_cpu.jax_own_lowering():",
       "with threefry_cpu.contextlib.nullcontext():",
       "tests/test_threefry_cpu.py", "-k", "flop_counts"),
    _m("solver-option-choices-not-checked", "samplers", "ardiff/processes/gaussian/samplers/base.py",
       "    if allowed is not None and value not in allowed:",
       "    if allowed is not None and value not in allowed and k != 'order':",
       "tests/processes/gaussian/test_diffusion.py", "-k", "option_errors"),
    _m("preview-spec-not-capped-at-T", "training", "ardiff/build.py",
       "  if isinstance(parsed.steps, int) and parsed.steps > limit:",
       "  if isinstance(parsed.steps, int) and parsed.steps > 10 * limit:",
       "tests/processes/test_contract.py", "-k", "preview"),
    _m("ctrl-c-handler-left-ignored", "training", "ardiff/train/preemption.py",
       "      signal.signal(sig, previous)", "      signal.signal(sig, signal.SIG_IGN)",
       "tests/train/test_reliability.py", "-k", "second_ctrl_c"),
    # ---- the launch scripts and what the docs and help pages say (issue [5/7], cases 12-18)
    _m("launch-usage-error-exits-1", "launch", "launch/common.sh",
       "  exit 2\n}", "  exit 1\n}", "tests/test_launch.py", "-k", "unknown_experiment"),
    _m("launch-dry-run-after-the-name-goes-to-ardiff", "launch", "launch/common.sh",
       'if [[ $arg == --dry-run ]]; then DRY_RUN=1; else RUN_ARGS+=("$arg"); fi',
       'RUN_ARGS+=("$arg")', "tests/test_launch.py", "-k", "dry_run_anywhere"),
    _m("launch-dry-run-lets-an-unknown-experiment-pass", "launch", "launch/common.sh",
       '  die "no experiment experiments/$EXP.py (known: ${known:-none})"',
       '  (( DRY_RUN )) || die "no experiment experiments/$EXP.py (known: ${known:-none})"',
       "tests/test_launch.py", "-k", "unknown_experiment"),
    _m("run-help-is-the-module-docstring", "docs", "ardiff/cli.py",
       "description=RUN_DESCRIPTION,", "description=__doc__,",
       "tests/test_cli_help.py"),
    _m("build-docstring-drops-a-kind", "docs", "ardiff/build.py",
       "    masked                masked (absorbing) diffusion ", "    (masked diffusion) ",
       "tests/docs/test_doc_facts.py"),
    _m("protocol-sample-without-mesh", "docs", "ardiff/processes/base.py",
       "             mesh=None) -> jax.Array:", "             ) -> jax.Array:",
       "tests/docs/test_doc_facts.py"),
    _m("notebook-integers-compared-with-tolerance", "docs", "tests/docs/notebook.py",
       "return int(committed) == int(fresh)",
       "return math.isclose(int(committed), int(fresh), rel_tol=RTOL)",
       "tests/docs/test_quickstart.py", "-m", "not slow"),
    _m("notebook-stderr-not-compared", "docs", "tests/docs/notebook.py",
       'for stream in ("stdout", "stderr"):', 'for stream in ("stdout",):',
       "tests/docs/test_quickstart.py", "-m", "not slow"),
    _m("spec-word-after-steps-read-as-second-step-count", "spec grammar",
       "ardiff/processes/spec.py", "      if not _is_integer(part):",
       "      if steps is None and not _is_integer(part):", "tests/processes/test_spec.py"),
    _m("guidance-alone-keeps-the-null-label", "sample cli", "ardiff/sampling_cli.py",
       "return args.label is None and args.guidance is not None and args.negative is None",
       "return args.label is None and args.guidance is None and args.negative is None",
       "tests/test_cli_sample.py", "-k", "guidance_without_a_label"),
    _m("eval-point-floor-from-the-held-out-points", "eval", "ardiff/evaluation.py",
       "floor = point_metrics(data.x_train[:len(samples)], data.x_test)",
       "floor = point_metrics(data.x_test[:len(samples)], data.x_test)",
       "tests/test_cli_sample.py", "-k", "eval_prints"),
    _m("eval-image-floor-for-the-held-out-size", "eval", "ardiff/evaluation.py",
       "scoring.floors(quality, len(samples))",
       "scoring.floors(quality, len(quality.dataset.x_test))",
       "tests/metrics/test_sample_quality.py", "-k", "eval_image_rows"),
    _m("eval-data-accepted-by-kind-not-spec", "eval", "ardiff/model_data.py",
       "    data = _rebuild(section, want.kind)\n    if data.spec == want:",
       "    data = _rebuild(section, want.kind)\n    if data.kind == want.kind:",
       "tests/test_model_data.py"),
    # ---- bad input found at run time (issue 29): one line, nothing lost
    _m("batch-split-checks-the-processes-twice", "bad input", "ardiff/parallel.py",
       "  if batch_size % devices:", "  if batch_size % processes:", RUNTIME, "-k", "split"),
    _m("preflight-checks-only-the-top-train-section", "bad input", "ardiff/preflight.py",
       "for prefix, section in sections(config):", "for prefix, section in [(\"\", config)]:",
       RUNTIME, "-k", "preflight"),
    _m("lock-file-error-caught-only-for-permissions", "bad input", "ardiff/workdir.py",
       "  except OSError as e:  # a read-only mount", "  except PermissionError as e:  #",
       RUNTIME, "-k", "read_only"),
    _m("config-json-not-put-back-after-a-failed-write", "bad input", "ardiff/cli.py",
       "      storage.rename(kept, path)\n", "      pass\n", RUNTIME, "-k", "config_json"),
    _m("sampling-steps-capped-one-below-the-timesteps", "bad input",
       "ardiff/processes/gaussian/process.py", "spec.steps > self.num_timesteps:",
       "spec.steps >= self.num_timesteps:", RUNTIME, "-k", "own_timesteps"),
    _m("checkpoint-of-another-model-compared-by-rank", "bad input", "ardiff/checkpoints.py",
       "    if saved[path] != wanted[path]:", "    if len(saved[path]) != len(wanted[path]):",
       RUNTIME, "-k", "another_model"),
    _m("disk-full-told-only-from-os-errors", "bad input", "ardiff/storage.py",
       "    if any(os.strerror(code) in str(error) for code in _FULL):",
       "    if isinstance(error, OSError) and any(os.strerror(c) in str(error) for c in _FULL):",
       RUNTIME, "-k", "disk_full or full_disk"),
    _m("orbax-logs-printed-on-a-full-disk", "bad input", "ardiff/checkpoints.py",
       'held_logs("absl", "asyncio", drop=storage.is_disk_full)',
       'held_logs("absl", "asyncio", drop=lambda error: False)', RUNTIME, "-k", "holds"),
    _m("tfds-warnings-printed-before-data-not-found", "bad input",
       "ardiff/data/tfds_source.py", "    with console.held_logs(\"absl\", drop=lambda error: True):",
       "    with console.held_logs(\"absl\", drop=lambda error: False):", RUNTIME, "-k", "tfds"),
    _m("sigterm-answered-in-the-middle-of-a-write", "bad input", "ardiff/sigterm.py",
       "    with self._writing:  # a write under way", "    if True:  # a write under way",
       RUNTIME, "-k", "sigterm_says"),
    _m("syntax-error-message-without-its-line", "bad input", "ardiff/configs/overrides.py",
       'where = f", line {e.lineno}" if e.lineno else ""', 'where = ""', BAD_CLI, "-k",
       "syntax"),
)


def _repo_files(root: str) -> list[str]:
  out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, check=True,
                       capture_output=True, text=True).stdout
  return [p for p in out.splitlines() if os.path.isfile(os.path.join(root, p))]


def _copy_repo(root: str, dest: str) -> None:
  for rel in _repo_files(root):
    target = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.join(root, rel), target)


def _apply(mutant: Mutant, dest: str) -> None:
  path = os.path.join(dest, mutant.path)
  with open(path) as f:
    text = f.read()
  count = text.count(mutant.old)
  if count != 1:
    raise RuntimeError(f"mutant {mutant.name}: the text to replace occurs {count} times in "
                       f"{mutant.path} (must be exactly once): {mutant.old!r}")
  with open(path, "w") as f:
    f.write(text.replace(mutant.old, mutant.new))


def run_mutant(mutant: Mutant, root: str = ROOT) -> tuple[str, float, str]:
  """(outcome, seconds, last line of pytest's output) for one mutant."""
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="ardiff-mutant-") as dest:
    _copy_repo(root, dest)
    _apply(mutant, dest)
    # The copy must shadow the (editable) installed package: PYTHONPATH comes first on
    # sys.path, and the check below makes sure the mutated file is the one imported.
    env = dict(os.environ, PYTHONPATH=dest, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c", "import ardiff; print(ardiff.__file__)"],
                           cwd=dest, env=env, capture_output=True, text=True)
    if not where.stdout.strip().startswith(dest):
      return "ERROR", time.perf_counter() - start, f"imports ardiff from {where.stdout.strip()}"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *mutant.tests], cwd=dest, env=env, capture_output=True, text=True)
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  last = lines[-1] if lines else proc.stderr.strip()[-200:]
  failed = [line.split(" - ")[0].split("::", 1)[-1] for line in lines
            if line.startswith("FAILED ")]
  if failed:  # which test caught it (-x: the first failure)
    last = f"{last}  [{failed[0]}]"
  outcome = {0: "NOT CAUGHT", 1: "caught"}.get(proc.returncode, "ERROR")
  return outcome, time.perf_counter() - start, last


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("words", nargs="*", help="run only mutants whose name contains one")
  parser.add_argument("--list", action="store_true", help="list the mutants and exit")
  parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1)")
  args = parser.parse_args(argv)
  chosen = [m for m in MUTANTS if not args.words or any(w in m.name for w in args.words)]
  if not chosen:
    print(f"no mutant matches {args.words}; see --list", file=sys.stderr)
    return 2
  if args.list:
    for m in chosen:
      print(f"{m.area:12s} {m.name:48s} {m.path}  <- {' '.join(m.tests)}")
    return 0
  for m in chosen:  # fail fast on a stale mutant, before any test runs
    with open(os.path.join(ROOT, m.path)) as f:
      if f.read().count(m.old) != 1:
        print(f"stale mutant {m.name}: its text is not found exactly once in {m.path}",
              file=sys.stderr)
        return 2
  print(f"{'area':12s} {'mutant':48s} {'outcome':10s} {'s':>6s}  pytest")
  results = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
    for m, (outcome, seconds, last) in zip(chosen, pool.map(run_mutant, chosen)):
      results.append(outcome)
      print(f"{m.area:12s} {m.name:48s} {outcome:10s} {seconds:6.0f}  {last}", flush=True)
  caught = results.count("caught")
  print(f"\n{caught} of {len(results)} mutants caught")
  return 0 if caught == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
