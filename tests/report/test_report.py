"""The report on hand-written run folders: table, figures, self-contained HTML, clear errors, compare."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from align.errors import AlignError
from align.report import build_report, compare_runs, load_evaluation
from align.report.plots import final_points
from align.report.tables import sample_tables

from fake_runs import make_run, write_stage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    run = make_run(tmp_path_factory.mktemp("runs"))
    result = build_report(run / "eval", run / "report")
    return {**result, "run": run, "md": Path(result["report_md"]).read_text(), "html": Path(result["report_html"]).read_text()}


def assert_png(data: bytes) -> None:
    import io

    import matplotlib.image

    assert data[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(io.BytesIO(data), format="png").shape[:2]
    assert width > 300 and height > 200


def table_rows(md: str) -> dict[str, str]:
    """The Results table's rows, by their first cell."""
    lines = md.splitlines()
    results = next(i for i, line in enumerate(lines) if line.startswith("#") and line.endswith(("Results", "Policies")))
    start = next(i for i, line in enumerate(lines) if i > results and line.startswith("| "))
    end = lines.index("", start)
    return {line.split("|")[1].strip(): line for line in lines[start + 2:end]}


def test_table_has_every_policy_and_its_numbers(report):
    rows = table_rows(report["md"])
    assert "0.120 (sd 0.40)" in rows["sft"] and "0.310 (sd 0.50)" in rows["sft"]
    ppo, dpo = rows["ppo"], rows["dpo"]
    for cell in ["0.550", "1.150", "0.71 [0.64, 0.78]", "4.200", "3.780", "82.0", "12.30", "1.630"]:
        assert cell in ppo
    for cell in ["0.480", "0.820", "0.66 [0.59, 0.73]", "2.900", "69.0", "| — |", "1.500"]:  # perplexity null -> dash
        assert cell in dpo
    assert "gold score (primary)" in report["md"] and "win rate vs sft [95 % CI]" in report["md"]
    assert "KL estimator: k1: mean over the policy's own samples" in report["md"]


def test_pngs_are_written_and_linked_relatively(report):
    names = sorted(Path(f).name for f in report["figures"])
    assert names == ["reward_vs_kl.png", "training_curves.png", "win_rates.png"]
    for figure in report["figures"]:
        assert_png(Path(figure).read_bytes())
        assert f"]({Path(figure).name})" in report["md"]


def test_html_is_self_contained(report):
    page = report["html"]
    assert "src=\"http" not in page and "href=\"http" not in page and "url(" not in page
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == 3
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert_png(base64.b64decode(src.split(",", 1)[1]))


def test_samples_show_five_prompts_side_by_side(report):
    assert "### Prompt 5" in report["md"] and "### Prompt 6" not in report["md"]
    assert "| sft | ppo | dpo |" in report["md"]
    assert "The lamp is great great great \\| and I love it." in report["md"]  # pipes escaped in markdown
    assert "gold 0.90, rm 1.80" in report["md"]
    shown = sample_tables(load_evaluation(report["run"] / "eval").samples, ["sft", "ppo", "dpo"], 2)
    assert [prompt for prompt, _, _ in shown] == ["Write a positive review of the lamp.", "Write a positive review of the phone."]


def test_training_logs_and_ppo_trajectory_are_loaded(report):
    evaluation = load_evaluation(report["run"] / "eval")
    assert list(evaluation.curves) == ["sft", "reward", "ppo", "dpo"]  # run order
    ppo = next(p for p in evaluation.policies if p.name == "ppo")
    assert [step for step, _, _ in ppo.trajectory] == [10, 20, 30, 40]
    assert ppo.trajectory[-1][1:] == pytest.approx((4.2, 0.31 + 0.021 * 40))
    assert evaluation.judges == ["gold", "rm"]


def test_missing_eval_stage_names_it(tmp_path):
    run = make_run(tmp_path)
    shutil.rmtree(run / "eval")
    with pytest.raises(AlignError, match=r"no evaluate stage .*'eval'"):
        build_report(run / "eval", tmp_path / "out")


def test_unfinished_eval_stage_says_to_run_it(tmp_path):
    run = make_run(tmp_path)
    (run / "eval" / ".align_complete.json").unlink()
    with pytest.raises(AlignError, match=r"has not finished.*--only eval"):
        build_report(run / "eval", tmp_path / "out")


@pytest.mark.parametrize("path", [("primary_judge",), ("policies", "ppo", "kl"), ("policies", "dpo", "win_rate", "ci_low")])
def test_malformed_metrics_names_the_missing_key(tmp_path, path):
    run = make_run(tmp_path)
    metrics_file = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    parent = metrics
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    metrics_file.write_text(json.dumps(metrics))
    with pytest.raises(AlignError, match=re.escape(f"missing key '{'.'.join(path)}'")):
        build_report(run / "eval", tmp_path / "out")


def test_null_fields_show_as_dashes(tmp_path):
    run = make_run(tmp_path)
    metrics_file = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["policies"]["dpo"].update(kl=None, kl_k3=None, win_rate=None, perplexity=None, bits_per_byte=None,
                                      kl_note="undefined: this policy's tokenizer differs from the reference's")
    metrics["policies"]["dpo"]["scores"]["rm"] = None
    metrics.pop("pairwise")
    metrics_file.write_text(json.dumps(metrics))
    md = Path(build_report(run / "eval", tmp_path / "out")["report_md"]).read_text()
    assert table_rows(md)["dpo"].count("—") == 6
    assert "KL not computed — dpo: undefined" in md


def test_report_stage_puts_the_trajectory_on_the_judge_ppo_trained_on(tmp_path):
    from align.recipe import StageRef
    from align.stages import report as stage

    run = make_run(tmp_path)
    reward = StageRef(str(run / "reward"), "reward")
    recipe = SimpleNamespace(
        stages={"ppo": SimpleNamespace(out_dir=run / "ppo", spec={"reward": reward}),
                "dpo": SimpleNamespace(out_dir=run / "dpo", spec={"model": StageRef(str(run / "sft"), "sft")})},
        judges={"gold": {"function": "align.data.builtin:gold_judge"}, "rm": {"reward_model": reward}})
    assert stage.trained_on(recipe, str(run / "ppo")) == "rm"
    assert stage.trained_on(recipe, str(run / "dpo")) is None
    ctx = SimpleNamespace(spec={"eval": StageRef(str(run / "eval"), "eval"), "samples": 2}, recipe=recipe,
                          out_dir=run / "report", is_main_process=True, tracking=None)
    result = stage.run(ctx)
    assert Path(result["report_html"]).is_file() and len(result["figures"]) == 3
    assert "### Prompt 2" in Path(result["report_md"]).read_text()
    assert "on the panel of the judge it was trained on." in Path(result["report_md"]).read_text()


def test_compare_runs_puts_both_runs_on_one_frontier(tmp_path):
    first = make_run(tmp_path / "runs", "beta0.1")
    second = make_run(tmp_path / "runs", "beta0.5", ppo_kl=8.0, dpo_kl=1.5)
    page = compare_runs([str(first), str(second)], str(tmp_path / "compare"), trained_on="rm")
    assert page == tmp_path / "compare" / "report.html"
    assert_png((tmp_path / "compare" / "frontier.png").read_bytes())
    rows = table_rows((tmp_path / "compare" / "report.md").read_text())
    for name in ["beta0.1/sft", "beta0.1/ppo", "beta0.1/dpo", "beta0.5/ppo", "beta0.5/dpo"]:
        assert name in rows
    assert "1.500" in rows["beta0.5/dpo"] and "8.000" in rows["beta0.5/ppo"]
    assert "data:image/png;base64," in page.read_text() and 'src="http' not in page.read_text()


def test_frontier_points_merge_identical_references(tmp_path):
    from align.report.compare import labelled

    runs = labelled([str(make_run(tmp_path / "a", "x")), str(make_run(tmp_path / "b", "y", ppo_kl=5.0, dpo_kl=1.0))])
    points = final_points([p for _, e in runs for p in e.policies], "gold")
    labels = {label for *_, label in points}
    assert "x/sft, y/sft" in labels  # same numbers: one point, one label
    assert {"x/ppo", "y/ppo", "x/dpo", "y/dpo"} <= labels


def test_compare_without_an_evaluate_stage_says_so(tmp_path):
    run = tmp_path / "run"
    write_stage(run, "sft", "sft", log_history=[{"step": 1, "loss": 1.0}])
    with pytest.raises(AlignError, match="no finished evaluate stage"):
        compare_runs([str(run)], str(tmp_path / "out"))


def test_report_says_what_each_policy_was_sampled_after(tmp_path):
    run = make_run(tmp_path)
    path = run / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    one = {"generation_prompt": "<｜Assistant｜>", "source": "trained", "problems": []}
    metrics["policies"]["sft"]["context"] = metrics["policies"]["dpo"]["context"] = one
    metrics["policies"]["ppo"]["context"] = {"generation_prompt": "<｜Assistant｜><think>\n", "source": "template",
                                             "problems": ["the policy is sampled after a context it is not trained in"]}
    path.write_text(json.dumps(metrics))
    md = Path(build_report(run / "eval", tmp_path / "report")["report_md"]).read_text()
    assert ("sft, dpo after '<｜Assistant｜>', the prompt SFT trained replies after (generation_prompt: trained); "
            "the context SFT, DPO and the reward model trained in") in md
    assert "ppo after '<｜Assistant｜><think>\\n', the chat template's generation prompt; NOT the context" in md
