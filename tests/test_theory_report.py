"""``cmlite theorem --json``: the machine-readable tables, end to end."""
import json
import math

import pytest

from cmlite.cli import main


@pytest.mark.slow
def test_cmlite_theorem_json(capsys):
    rc = main(["theorem", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["passed"]
    th1 = res["theorem1"]
    # the headline: slopes on the stated regime, within the tolerances
    assert abs(th1["slopes"]["euler"] - 1) <= 0.1
    assert abs(th1["slopes"]["heun"] - 2) <= 0.15
    for s, p in (("euler", 1), ("heun", 2)):
        sv = th1["solvers"][s]
        assert sv["expected_order"] == p and sv["slope"] == th1["slopes"][s]
        lo, hi = sv["regime"]["N"]
        dt_lo, dt_hi = sv["regime"]["dt"]
        assert lo < hi and dt_lo < dt_hi
        assert sv["toy"] and sv["norm"] and sv["test_set"]
        rows = sv["rows"]
        assert {"N", "dt", "error", "local_slope"} <= set(rows[0])
        # the rows reproduce the fitted slope (least squares over the regime, recomputed here)
        fit = [r for r in rows if lo <= r["N"] <= hi]
        x = [math.log(r["dt"]) for r in fit]
        y = [math.log(r["error"]) for r in fit]
        xm, ym = sum(x) / len(x), sum(y) / len(y)
        slope = sum((a - xm) * (b - ym) for a, b in zip(x, y)) / sum((a - xm) ** 2 for a in x)
        assert slope == pytest.approx(sv["slope"], abs=1e-9)
    # every toy states its test set, reference and regime; the narrow one is flagged as pre-asymptotic
    assert set(th1["toys"]) == {"gaussian", "mixture", "narrow/segment"}
    assert "note" in th1["toys"]["narrow/segment"]
    assert res["theorem2"]["rows"] and res["pf_ode"]["round_trip"]["passed"]
    # the continuous-time section (Theorems 3-6): headline orders and z, reachable as these paths
    c = res["continuous"]
    for th, key, p in (("theorem3", "slope", 1), ("theorem4", "slope", 1), ("theorem5", "grad_slope", 1),
                       ("theorem6", "grad_slope", 1), ("ct_same_target", "slope", 2)):
        assert abs(c[th][key] - p) <= c[th]["tolerance"], (th, c[th][key])
    assert abs(c["theorem6"]["cd_ct_gap_z"]) < 3
