"""The preferred law fitted again to each part of the loss: targets a model could copy, and the rest.

A validation target is "repeat" when its token already occurred earlier in the window and
"novel" otherwise (tlc.train.evaluation records both at every evaluation). Learning to copy from
the context (Olsson et al. 2022's induction heads) lowers the first part abruptly, at a point in
training that depends on the model and the seed, and a smooth law of N and D cannot see it coming.
Fitted apart, the novel part follows the law closely; a repeat part that falls faster at each
run's longest points than a refit on the shorter ones predicts (leave-longest-out bias above
zero) says the models were still learning to copy where the sweep stopped, so losses past its
tokens will likely come out lower than the joint law predicts. On the summed loss the two biases
cancel and hide this (BENCHMARKS.md, "Where the plans past 1× missed").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scaling.diagnostics import leave_longest_out
from scaling.fitting import fit_law
from scaling.forms import LAWS, LawForm
from scaling.observations import SweepObservations

PARTS = ("repeat", "novel")  # the columns of RunCurve.finished_split
# a repeat part whose leave-longest-out refit overestimates the held-out losses by more than this
# (and by more than the novel part does) is flagged as still falling faster at the sweep's end
COPYING_BIAS = 0.01


def fit_loss_split(form: LawForm, observations: SweepObservations) -> dict | None:
    """``form`` fitted to each part of the loss at every finished-run point, or None when any run lacks
    the split. Fields: form, share (mean fraction of repeat targets), parts {repeat, novel:
    {parameters, status, rms, heldout_tokens}}, copying_under_way (bool) and note."""
    runs = observations.runs
    if not runs or any(r.finished_split is None for r in runs):
        return None
    table = observations.points(final_only=True)
    split = np.concatenate([r.finished_split for r in runs])
    repeat, novel = split[:, 0], split[:, 1]
    # each point's loss is share * repeat + (1 - share) * novel: the share follows from the three
    apart = np.abs(novel - repeat) > 1e-9
    share = float(np.mean((novel - table.loss)[apart] / (novel - repeat)[apart])) if apart.any() else None
    parts = {}
    for j, part in enumerate(PARTS):
        part_table = dataclasses.replace(table, loss=split[:, j])
        fit = fit_law(form, {"N": part_table.N, "D": part_table.D}, part_table.loss)
        predicted = form.predict(fit.parameters, N=part_table.N, D=part_table.D)
        held = leave_longest_out(form, observations, part_table)
        parts[part] = {
            "parameters": dataclasses.asdict(fit.parameters),
            "status": fit.status,
            "rms": float(np.sqrt(np.mean((predicted / part_table.loss - 1.0) ** 2))),
            "heldout_tokens": dataclasses.asdict(held) if held else None,
        }
    biases = {part: (parts[part]["heldout_tokens"] or {}).get("bias") for part in PARTS}
    copying = (biases["repeat"] is not None and biases["novel"] is not None
               and biases["repeat"] > COPYING_BIAS and biases["repeat"] > biases["novel"])
    return {
        "form": form.name,
        "share": share,
        "parts": parts,
        "copying_under_way": copying,
        "note": ("the preferred law's form fitted to each part of the loss at the finished-run points: 'repeat' "
                 "targets occurred earlier in their window, 'novel' ones did not; copying_under_way: the repeat "
                 f"part's leave-longest-out bias is above {COPYING_BIAS:.0%} and above the novel part's"),
    }


def predict_split(loss_split: dict | None, N: float, D: float) -> dict[str, float] | None:
    """Each part's predicted loss at (N, D) from fit.json's ``loss_split`` (None without one)."""
    if not loss_split:
        return None
    form = LAWS[loss_split["form"]]
    out = {}
    for part in PARTS:
        params = form.parameters_type(**loss_split["parts"][part]["parameters"])
        out[part] = float(form.predict(params, N=np.array([float(N)]), D=np.array([float(D)]))[0])
    return out
