"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel)
on the embedded model: revise, rubric-labelled prefs, a rubric evaluation and 2 steps of online
DPO with a Python reward. A cell runs inside the kernel's event loop: before `engine.loop.run_sync`
every stage raised "asyncio.run() cannot be called from a running event loop" there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"

# appended by the test, not shipped: what the notebook's cells made, as one JSON line
REPORT = """import json
print(json.dumps({
    "revisions": [r.status for r in revisions],
    "pairs": [p.status for p in pairs],
    "scored": all("scores" in p.metadata for p in pairs),  # labelled by rubric scores
    "principles": sorted(evaluation.report.as_dict()["rates"]),
    "online_dpo": {"path": str(path), "steps": len(history),
                   "pairs": [h["decisive"] + h["ties"] + h["failed"] for h in history]},
}))"""


@pytest.mark.slow
def test_quickstart_notebook_runs_in_a_real_jupyter_kernel(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    report = json.loads(nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
    assert report["revisions"] == ["ok"] * 4
    assert report["pairs"] and set(report["pairs"]) == {"ok"}
    assert report["scored"] and "brief" in report["principles"]
    # online DPO, 2 steps with a Python reward: 2 prompts (2 pairs) a step, its run files in out=
    assert report["online_dpo"] == {"path": "runs/online-dpo", "steps": 2, "pairs": [2, 2]}
    run = tmp_path / "runs" / "online-dpo"
    assert json.loads((run / "log_history.json").read_text())[-1]["step"] == 2
    for name in ("train_config.yaml", "training_curves.png", "adapter_config.json"):
        assert (run / name).is_file(), name
    # the stages without out= left nothing in the working directory
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["online-dpo"]
