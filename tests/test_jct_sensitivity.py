"""benchmarks/jct_sensitivity.py: how much a simulated mean JCT moves with the machine's speed."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "validation" / "validate-cpu.yaml"


@pytest.fixture(scope="module")
def sens():
    spec = importlib.util.spec_from_file_location("jct_sensitivity",
                                                  ROOT / "benchmarks" / "jct_sensitivity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_amplification_formula(sens):
    assert sens.amplification(0.2, 0.2, 1.1) == pytest.approx(1.0)   # the rate changed nothing
    assert sens.amplification(0.2, 0.2 * 1.16 / 1.1, 1.1) == pytest.approx(1.6)   # 10% -> 16%
    assert sens.amplification(0.2, 0.2 / 1.1, 1.1) == pytest.approx(0.0)  # JCT follows arrivals


def test_no_queue_moves_jct_as_the_machine_and_a_queue_amplifies_it(sens):
    from simulator.calibrate.validate import plan_validation
    from simulator.hardware import load_hardware
    tp = plan_validation(str(EXPERIMENT), "sim")[1][0]
    profile = tp.config["hardware"]                # the experiment's A100 profile
    planning = load_hardware(profile)
    lone = sens.mean_jct_s(tp, profile, planning, 5.0, requests=1)
    # a request every 100 s never waits: JCT is the lone request's at both rates, amplification 1
    idle = sens.mean_jct_s(tp, profile, planning, 0.01)
    assert idle == pytest.approx(lone, rel=1e-9)
    assert sens.amplification(idle, sens.mean_jct_s(tp, profile, planning, 0.011),
                              1.1) == pytest.approx(1.0, abs=1e-6)
    # offered at 80% of what one request at a time can serve, requests queue: more than 1
    rate = 0.8 / lone
    busy = sens.mean_jct_s(tp, profile, planning, rate)
    assert busy > 1.2 * lone
    assert sens.amplification(busy, sens.mean_jct_s(tp, profile, planning, rate * 1.1), 1.1) > 1.2


def test_a_folder_without_a_validation_is_refused(sens, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sens.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "calibrated.yaml: no such file" in capsys.readouterr().err


def test_variants_are_found_where_validate_writes_them():
    from simulator.calibrate.inrun import variant_path
    assert variant_path("d", "calibrated", "pp[tp=1]") == "d/calibrated-inrun-host-pp_tp_1.yaml"


def test_it_reports_every_strategy_of_a_validate_folder(sens, tmp_path, capsys):
    # a folder as validate leaves it, with a built-in profile standing in for the measured ones
    # and no per-strategy variant (each strategy falls back to calibrated-inrun.yaml)
    text = (ROOT / "hwprofiles" / "a100-sxm4-80gb.yaml").read_text()
    for name in ("calibrated.yaml", "calibrated-inrun.yaml"):
        (tmp_path / name).write_text(text)
    assert sens.main([str(tmp_path), "--rate", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["tp", "pp[tp=1]", "iso", "liger"]
    assert all("at 2 requests/s" in line and "amplification" in line for line in lines)
