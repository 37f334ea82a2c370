"""The reproduction of REFERENCE.md: presets, the report and its verdicts, the pictures."""
import mlflow
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image, ImageStat

from conftest import QUIET, SHARED_DATA, cli
from experiments.api import run_experiment
from experiments.reproduce import all_presets, verdict

TOLERANCE = OmegaConf.create({"accuracy": 0.01, "mse": 0.5})
FAST = ["xor_mlp", "xor_linear", "circle_zero_init", "circle_random_init"]


def test_every_preset_composes_with_its_published_number():
    assert len(all_presets()) >= 14
    for preset in all_presets():
        result = cli("-m", "experiments", "--cfg", "job", f"experiment={preset}")
        assert result.returncode == 0, f"{preset}: {result.stderr}"
        published = yaml.safe_load(result.stdout)["published"]
        assert published["reference"] and "value" in published, preset


def test_verdicts_follow_the_tolerances():
    assert verdict("val/accuracy", 0.974, 0.965, False, TOLERANCE) == "yes"
    assert verdict("val/accuracy", 0.974, 0.96, False, TOLERANCE) == "no"
    assert verdict("val/accuracy", 0.974, 0.99, False, TOLERANCE) == "yes"
    assert verdict("train/loss", 21.9, 22.3, False, TOLERANCE) == "yes"
    assert verdict("train/loss", 21.9, 21.3, False, TOLERANCE) == "no"
    assert verdict("val/accuracy", 0.75, 0.75, True, TOLERANCE) == "yes"
    assert verdict("val/accuracy", 0.75, 1.0, True, TOLERANCE) == "no"
    assert verdict("model/distinct_hidden_units", 8, 8, False, TOLERANCE) == "yes"
    assert verdict(None, None, None, False, TOLERANCE) == "n/a"
    assert verdict("val/accuracy", 0.9, None, False, TOLERANCE) == "no"


def report_rows(tmp_path) -> dict[str, dict[str, str]]:
    (report,) = tmp_path.glob("outputs/*/*/reproduction.md")
    lines = [line for line in report.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[1:]]
    return {row["experiment"]: row for row in rows}


def test_reproduce_runs_the_chosen_presets_and_reports_verdicts(tmp_path, store):
    result = cli("-m", "experiments.reproduce", f"presets=[{','.join(FAST)}]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = report_rows(tmp_path)
    assert set(rows) == set(FAST)
    assert rows["xor_mlp"]["ours"] == "1" and rows["xor_linear"]["metric"] == "val/accuracy"
    assert float(rows["xor_linear"]["ours"]) <= 0.75
    assert rows["circle_zero_init"]["ours"] == "1" and rows["circle_random_init"]["ours"] == "8"
    assert {row["verdict"] for row in rows.values()} == {"yes"}
    assert all(float(row["fit seconds"]) > 0 for row in rows.values())
    assert "alembic" not in result.stdout + result.stderr  # the store's set-up is no news to the user

    experiment = store.get_experiment_by_name("experiments").experiment_id
    (report_run,) = store.search_runs([experiment], "attributes.run_name LIKE 'reproduction-%'")
    assert report_run.data.metrics["within_tolerance"] == len(FAST)
    assert "reproduction.md" in {a.path for a in store.list_artifacts(report_run.info.run_id)}


def test_reproduce_says_no_when_a_run_falls_short(tmp_path):
    result = cli("-m", "experiments.reproduce", "presets=[xor_mlp]", "overrides=['trainer.max_epochs=1']", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert report_rows(tmp_path)["xor_mlp"]["verdict"] == "no"


def assert_real_png(path, min_size=(300, 250)):
    image = Image.open(path).convert("L")
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    assert ImageStat.Stat(image).stddev[0] > 10, f"{path} looks blank"
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20


def test_2d_runs_log_loss_curves_and_decision_boundary(tmp_path):
    result = run_experiment(["data=circle", "trainer.max_epochs=3", *QUIET])
    for name in ("loss_curves.png", "decision_boundary.png"):
        assert_real_png(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=f"plots/{name}",
                                                            dst_path=str(tmp_path)))


def test_cli_run_saves_the_plots_in_its_output_folder(tmp_path):
    result = cli("-m", "experiments", "data=xor", "trainer.max_epochs=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = {p.parent for p in tmp_path.glob("outputs/*/*/loss_curves.png")}
    assert_real_png(folder / "loss_curves.png")
    assert_real_png(folder / "decision_boundary.png")


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").is_dir(), reason="needs ../shared/data")
def test_multiclass_image_runs_log_a_confusion_matrix(tmp_path):
    result = run_experiment(["data=mnist", "model=mlp", "data.limit=600", "data.val_size=100", "trainer.max_epochs=1",
                             *QUIET])
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="plots/confusion_matrix.png",
                                               dst_path=str(tmp_path))
    assert_real_png(path, min_size=(500, 450))
