"""benchmarks/fact_curve.py: the trainer's loop with fact probes, on a smoke-sized run."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fact_curve_probes_and_draws(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fact_curve", ROOT / "benchmarks/fact_curve.py")
    fact_curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fact_curve)
    png = tmp_path / "curve.png"
    assert fact_curve.main(["--steps", "3", "--probe-every", "2", "--tinyworld-docs", "60",
                            "--png", str(png)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["2", "3"]  # every 2 steps and at the end
    assert all("held-out facts" in x and "capital=" in x for x in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
