"""`tlc plan` on laws without a sweep: closed-form optima, budgets, units and input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tlc.plan import command as tlc_plan
from tlc.errors import UserError
from tlc.plan.cost import CostModel, MeasuredVariant, fit_bytes, fit_latency
from tlc.plan.law import PUBLISHED_LAWS, load_plan_law
from tlc.units import format_bytes, format_count, parse_bytes, parse_count, parse_flops


def plan(argv: list[str], capsys) -> dict:
    """Run ``tlc plan ARGV --json`` in this process and return the printed plan."""
    assert tlc_plan.main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def closed_form(parameters, compute: float) -> tuple[float, float]:
    """Hoffmann et al. 2022 eq. 4: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b."""
    E, A, B, alpha, beta = (parameters[k] for k in ("E", "A", "B", "alpha", "beta"))
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    return G * (compute / 6) ** (beta / (alpha + beta)), (compute / 6) ** (alpha / (alpha + beta)) / G


def law_parameters(name: str) -> dict:
    p = PUBLISHED_LAWS[name][0]
    return {k: getattr(p, k) for k in ("E", "A", "B", "alpha", "beta")}


# -- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("20MB", 20e6), ("1.5GiB", 1.5 * 2**30), ("5e7", 5e7), ("300 kB", 3e5),
                                         ("2KiB", 2048), ("12b", 12)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["20XB", "MB", "-1MB", "0", "1e400", "ten"])
def test_parse_bytes_errors_name_the_flag(text):
    with pytest.raises(UserError, match="--max-bytes"):
        parse_bytes(text)


def test_parse_counts_and_flops():
    assert parse_count("125M") == 125e6 and parse_count("1.3B") == 1.3e9 and parse_count("2e8") == 2e8
    assert parse_flops("3.5e18") == 3.5e18
    for bad in ("-1", "0", "nan", "1e17x"):
        with pytest.raises(UserError, match="--budget"):
            parse_flops(bad)
    with pytest.raises(UserError, match="valid suffixes"):
        parse_count("3Q", "--max-params")


def test_formatting_rounds_before_choosing_the_unit():
    assert format_bytes(999_999_999.9) == "1 GB" and format_count(999_999_999.9) == "1B"
    assert format_count(125e6) == "125M" and format_bytes(512) == "512 B"


# -- closed forms -----------------------------------------------------------------------------


@pytest.mark.parametrize("law", ["chinchilla", "besiroglu"])
@pytest.mark.parametrize("compute", [1e19, 1e22])
def test_published_law_without_inference_budget_is_the_closed_form_allocation(law, compute, capsys):
    result = plan(["--law", law, "--budget", compute], capsys)
    n_opt, d_opt = closed_form(law_parameters(law), compute)
    rec = result["recommendation"]
    assert rec["non_embedding_params"] == pytest.approx(n_opt, rel=0.05)
    assert rec["tokens"] == pytest.approx(d_opt, rel=0.05)
    assert rec["train_flops"] == pytest.approx(compute, rel=1e-9)
    assert rec["compression"] == {"method": "none", "sparsity": 0.0, "int8": False, "timing": "dense"}
    assert result["gain"]["loss"] == pytest.approx(0.0, abs=1e-9)


SYNTHETIC = {"E": 2.0, "A": 300.0, "B": 900.0, "alpha": 0.4, "beta": 0.3}


def test_synthetic_law_lands_within_two_percent_of_its_optimum(tmp_path, capsys):
    path = tmp_path / "law.json"
    path.write_text(json.dumps(SYNTHETIC))
    compute = 3e18
    n_opt, d_opt = closed_form(SYNTHETIC, compute)
    free = plan(["--law", path, "--budget", compute], capsys)["recommendation"]
    assert free["non_embedding_params"] == pytest.approx(n_opt, rel=0.02)
    assert free["tokens"] == pytest.approx(d_opt, rel=0.02)
    # A parameter budget below N_opt binds: the optimum is N = budget, D = C / (6 N), a closed form too.
    limit = n_opt / 5
    bound = plan(["--law", path, "--budget", compute, "--max-params", limit], capsys)["recommendation"]
    assert bound["non_embedding_params"] == pytest.approx(limit, rel=0.02)
    assert bound["non_embedding_params"] <= limit * (1 + 1e-9)
    assert bound["tokens"] == pytest.approx(compute / (6 * limit), rel=0.02)
    expected = SYNTHETIC["E"] + SYNTHETIC["A"] / limit ** 0.4 + SYNTHETIC["B"] / (compute / (6 * limit)) ** 0.3
    assert bound["loss"]["mean"] == pytest.approx(expected, rel=1e-6)


def test_inference_tokens_come_out_of_the_budget_and_shrink_the_model(capsys):
    compute, served = 1e21, 2e12
    without = plan(["--law", "chinchilla", "--budget", compute], capsys)["recommendation"]
    result = plan(["--law", "chinchilla", "--budget", compute, "--inference-tokens", served], capsys)
    rec = result["recommendation"]
    n = rec["non_embedding_params"]
    assert rec["inference_flops"] == pytest.approx(2 * n * served)
    assert rec["train_flops"] + rec["inference_flops"] == pytest.approx(compute, rel=1e-9)
    assert n < without["non_embedding_params"]
    # Brute force over N along 6ND + 2NI = C (Sardana et al. 2024's objective).
    p = law_parameters("chinchilla")
    grid = np.geomspace(1e7, compute / (2 * served) * 0.999, 200_000)
    tokens = (compute - 2 * grid * served) / (6 * grid)
    loss = p["E"] + p["A"] / grid ** p["alpha"] + p["B"] / tokens ** p["beta"]
    assert n == pytest.approx(grid[np.argmin(loss)], rel=0.02)


def test_more_budget_never_predicts_a_worse_loss(capsys):
    budgets = np.geomspace(1e18, 1e23, 6)
    plans = [plan(["--law", "chinchilla", "--budget", c, "--max-params", "3e8"], capsys) for c in budgets]
    losses = [p["recommendation"]["loss"]["mean"] for p in plans]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))


# -- input errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["--law", "chinchilla", "--budget", "-1"], "--budget"),
    (["--law", "chinchilla", "--budget", "1e20", "--max-bytes", "20XB"], "--max-bytes"),
    (["--budget", "1e20"], "--runs or --law"),
    (["--law", "chinchilla", "--runs", ".", "--budget", "1e20"], "--runs and --law"),
    (["--law", "kaplan2020", "--budget", "1e20"], "--law"),
    (["--law", "chinchilla", "--budget", "1e20", "--methods", "magnitude"], "--methods"),
    (["--law", "chinchilla", "--budget", "1e20", "--no-int8"], "--no-int8"),
    (["--law", "chinchilla"], "--budget"),
    (["--law", "chinchilla", "--budget", "1e20", "--max-latency-ms", "5", "--device", "cpu"], "--max-latency-ms"),
    (["--law", "chinchilla", "--budget", "1e20", "--max-params", "10"], "--max-params"),
    (["--law", "chinchilla", "--budget", "1e4"], "--budget"),
    (["--law", "chinchilla", "--budget", "1e20", "--inference-tokens", "1e20"], "--inference-tokens"),
    (["--law", "chinchilla", "--budget", "1e20", "--inference-tokens", "-5"], "--inference-tokens"),
])
def test_bad_input_is_one_line_naming_the_flag(argv, flag, capsys):
    assert tlc_plan.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tlc plan: error: ") and "\n" not in err and flag in err


def test_unmeetable_budget_names_the_smallest_that_could_be_met(capsys):
    assert tlc_plan.main(["--law", "chinchilla", "--budget", "1e20", "--max-bytes", "1kB"]) == 2
    err = capsys.readouterr().err.strip()
    # The smallest continuous model, 1e4 parameters of 4 bytes, is 40 kB.
    assert "cannot be met" in err and "needs 40 kB" in err and "\n" not in err


def test_bad_law_files(tmp_path):
    bad = tmp_path / "law.json"
    bad.write_text(json.dumps({"E": 1.0, "A": 1.0, "B": 1.0, "alpha": -0.3, "beta": 0.3}))
    with pytest.raises(UserError, match="alpha must be > 0"):
        load_plan_law(None, str(bad))
    bad.write_text(json.dumps({"format": "tlc.fit/0"}))
    with pytest.raises(UserError, match="format"):
        load_plan_law(None, str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        load_plan_law(None, str(bad))
    with pytest.raises(UserError, match="not found"):
        load_plan_law(None, str(tmp_path / "missing.json"))


# -- cost model -------------------------------------------------------------------------------


def test_latency_fit_recovers_a_known_device():
    """log latency = a_g + 0.8 log P + c_g log(1 - s): two groups, one sped up by sparsity."""
    truth = {("none", False): (-9.0, 0.0), ("block", False): (-8.8, 0.6), ("none", True): (-9.4, 0.0)}
    variants = []
    for P in (1e5, 4e5, 2e6, 1e7):
        for (method, int8), (a, c) in truth.items():
            for s in ((0.0,) if method == "none" else (0.5, 0.75, 0.9)):
                ms = math.exp(a + 0.8 * math.log(P) + c * math.log1p(-s))
                variants.append(MeasuredVariant("r", (method, int8), s, P, None, None, {1: ms}, "cpu"))
    model = fit_latency(variants, "cpu", 1)
    assert model.size_exponent == pytest.approx(0.8, abs=1e-9)
    assert model.sparsity_exponents[("block", False)] == pytest.approx(0.6, abs=1e-9)
    costs = CostModel(bytes_fits={}, latency=model)
    expected = math.exp(-8.8 + 0.8 * math.log(3e6) + 0.6 * math.log(0.2))
    assert costs.latency_ms(2.5e6, 5e5, 0.8, "block", False) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(UserError, match="devices measured: cpu"):
        fit_latency(variants, "cuda", 1)
    renamed = [MeasuredVariant(*(v.__dict__[k] for k in v.__dataclass_fields__ if k != "device"), device=name)
               for v in variants for name in ("cpu:x86_64:2threads", "cpu:x86_64:8threads")]
    assert fit_latency(renamed, "cpu:x86_64:8", 1).device == "cpu:x86_64:8threads"  # a prefix naming one device
    with pytest.raises(UserError, match="names several devices"):
        fit_latency(renamed, "cpu", 1)


def test_bytes_model_recovers_a_bitmask_format_and_falls_back_to_defaults():
    """bytes = 4·nonzeros + P/8 (fp32 values and a bitmask), measured at three sizes and two sparsities."""
    variants = []
    for P in (2e5, 1e6, 5e6):
        for s in (0.5, 0.9):
            nonzeros = 0.1 * P + (1 - s) * 0.9 * P
            variants.append(MeasuredVariant("r", ("magnitude", False), s, P, nonzeros, 4 * nonzeros + P / 8, {}, None))
        variants.append(MeasuredVariant("r", ("none", True), 0.0, P, P, 1.0 * P, {}, None))
    costs = CostModel(bytes_fits=fit_bytes(variants))
    v, m = costs.bytes_coefficients("magnitude", False)
    assert v == pytest.approx(4.0, rel=1e-6) and m == pytest.approx(0.125, rel=1e-6)
    assert costs.bytes(9e5, 1e5, 0.5, "magnitude", False) == pytest.approx(4 * 5.5e5 + 1e6 / 8)
    assert costs.bytes_coefficients("none", True) == pytest.approx((1.0, 0.0), abs=1e-9)
    assert costs.bytes_coefficients("block", True) == (1.0, 0.0)  # never measured: the defaults
    assert costs.bytes_coefficients("2:4", False) == (4.0, 0.125)


def test_one_transaction_stores_what_add_trials_stores(tmp_path):
    """The fast SQLite path and Optuna's public add_trials leave the same trials behind."""
    import optuna

    from tlc.plan.search import open_storage
    from tlc.plan.trial_store import store_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.TPESampler(seed=1))

    def objective(trial):
        x = trial.suggest_float("x", 1.0, 10.0, log=True)
        method = trial.suggest_categorical("compression", ["none", "block+int8"])
        depth = trial.suggest_int("depth", 1, 128, log=True)
        trial.set_user_attr("label", f"{method}-{depth}")
        trial.set_constraint("bytes", x - 5.0)
        return x, depth / x

    source.optimize(objective, n_trials=10)
    _, storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    written = {}
    for name, transaction in (("fast", True), ("public", False)):
        optuna.create_study(study_name=name, storage=storage, directions=source.directions)
        written[name] = store_trials(storage, name, source.get_trials(deepcopy=False), transaction=transaction)
    assert written == {"fast": "transaction", "public": "add_trials"}

    def stored(name):
        return [(t.number, t.state, t.params, t.distributions, t.values, t.user_attrs, t.system_attrs,
                 t.datetime_start, t.datetime_complete)
                for t in optuna.load_study(study_name=name, storage=storage).get_trials()]

    assert stored("fast") == stored("public") and len(stored("fast")) == 10


def test_trials_the_transaction_does_not_cover_go_through_add_trials(tmp_path):
    import optuna

    from tlc.plan.search import open_storage
    from tlc.plan.trial_store import store_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    source = optuna.create_study()
    for k, value in ((0, float("inf")), (1, 1.0)):  # an infinite objective is stored by Optuna as its own type
        source.add_trial(create_trial(params={"k": k}, distributions={"k": IntDistribution(0, 3)}, value=value))
    _, storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    optuna.create_study(study_name="s", storage=storage)
    assert store_trials(storage, "s", source.get_trials(deepcopy=False)) == "add_trials"
    values = [t.value for t in optuna.load_study(study_name="s", storage=storage).get_trials()]
    assert values == [t.value for t in source.trials]


def test_trials_written_to_sqlite_read_back_as_optuna_wrote_them(tmp_path):
    import optuna

    from tlc.plan.trial_store import persist

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))

    def objective(trial):
        x = trial.suggest_float("x", 1.0, 10.0, log=True)
        trial.suggest_categorical("compression", ["none", "2:4+int8"])
        trial.suggest_int("depth", 1, 128, log=True)
        trial.set_constraint("bytes", x - 5.0)
        return x

    study.optimize(objective, n_trials=12)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    persist(url, {"s": study})
    persist(url, {"s": study})  # a rerun replaces the study
    stored = optuna.load_study(study_name="s", storage=url)
    assert len(stored.trials) == 12
    for mine, theirs in zip(study.trials, stored.trials):
        assert (mine.number, mine.state, mine.params, mine.values, mine.constraints, mine.distributions) == (
            theirs.number, theirs.state, theirs.params, theirs.values, theirs.constraints, theirs.distributions)
    stored.optimize(objective, n_trials=1)  # Optuna itself can carry on from what was written
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 13


from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    alpha=st.floats(0.2, 0.6), beta=st.floats(0.2, 0.6), A=st.floats(50, 2000), B=st.floats(50, 5000),
    log_compute=st.floats(16, 24), squeeze=st.floats(1.5, 50),
)
def test_polish_finds_the_closed_form_even_from_few_trials(tmp_path, capsys, alpha, beta, A, B, log_compute, squeeze):
    """Four TPE trials are far from the optimum; the polish must still land on it, free and under a bound."""
    law = {"E": 1.5, "A": A, "B": B, "alpha": alpha, "beta": beta}
    path = tmp_path / "law.json"
    path.write_text(json.dumps(law))
    compute = 10**log_compute
    n_opt, d_opt = closed_form(law, compute)
    assume(1e5 < n_opt and d_opt > 1e3)  # an interior optimum of the planner's range of N
    few = ["--law", path, "--budget", compute, "--trials", 4, "--pareto-trials", 4]
    free = plan(few, capsys)["recommendation"]
    assert free["non_embedding_params"] == pytest.approx(n_opt, rel=0.01)
    assert free["tokens"] == pytest.approx(d_opt, rel=0.01)
    limit = max(n_opt / squeeze, 2e4)
    bound = plan([*few, "--max-params", limit], capsys)["recommendation"]
    assert bound["non_embedding_params"] == pytest.approx(min(limit, n_opt), rel=0.01)


def test_device_without_measurements_names_the_device_flag(capsys):
    assert tlc_plan.main(["--law", "chinchilla", "--budget", "1e20", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("tlc plan: error: --device: no compress.jsonl")
