"""How a stage process ends: a known input error as its message and exit status 1, anything else as a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from flows.common import run_stage
from polydistill.data.ingest import CorpusLoadError
from polydistill.model.soft_labels import SoftLabelMismatch


class FailingStage:
    """Stands where a stage flow goes: it has a name and raises the error it was given."""

    name = "prepare"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self) -> None:
        raise self.error


@pytest.mark.parametrize("error", [CorpusLoadError("column 'review' not found"),
                                   SoftLabelMismatch("column 'review' not found")])
def test_a_known_input_error_ends_the_stage_with_its_message(error: Exception,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        run_stage(FailingStage(error))
    assert ended.value.code == 1
    assert "stage prepare failed: column 'review' not found" in capsys.readouterr().err


def test_any_other_error_propagates() -> None:
    with pytest.raises(KeyError, match="review"):
        run_stage(FailingStage(KeyError("review")))


def test_a_data_stage_does_not_import_the_soft_label_module_to_catch_its_error() -> None:
    script = ("import sys\nimport flows.fetch\nfrom flows.common import loaded_input_errors\n"
              "print(sorted(error.__name__ for error in loaded_input_errors()), "
              "'polydistill.model.soft_labels' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "'SoftLabelMismatch'" not in shown.stdout and shown.stdout.strip().endswith("False"), shown.stdout
