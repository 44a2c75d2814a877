"""CI must run exactly what README tells a new user to run."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    setup = [line for line in readme if line.startswith("python3 -m venv")]
    assert len(setup) == 2 and setup[0].endswith("l2m train") and setup[1].endswith("pytest")
    assert setup[1] in (ROOT / ".ci" / "run").read_text().splitlines()
