from __future__ import annotations

import html
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from grpokit.cli import main
from grpokit.monitoring import MetricsLogger
from grpokit.monitoring.events import record_event
from grpokit.report import PANELS, REPORT_FILENAME, describe_change, summarize, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Sets data-images-loaded on <body> to the number of images once every one has decoded, else "broken".
_IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
  document.body.setAttribute("data-images-loaded", ok ? String(images.length) : "broken");
});
</script>"""


def _synthetic_run(run_dir: Path, *, with_alarm: bool = True) -> Path:
    """30 steps of a hacked run: proxy rises, gold peaks at step 10 and falls, entropy decays."""
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step in range(31):
            metrics = {
                "reward/mean": 0.3 + 0.02 * step,
                "train/entropy_mean": math.exp(-step / 10),
                "train/entropy_p10": 0.5 * math.exp(-step / 10),
                "train/clip_frac_low": 0.01 * step / 30,
                "train/clip_frac_high": 0.02,
                "train/ratio_mean": 1 - 0.003 * step,
                "train/ratio_std": 0.05,
                "completion/length_mean": 3 + step / 10,
                "frac_reward_zero_std": step / 40,
            }
            if step % 10 == 0:
                gold = 0.5 - abs(step - 10) / 40
                metrics.update(
                    {"proxy/score": 0.3 + 0.02 * step, "gold/score": gold, "eval/mean@4": 100 * gold}
                )
            if step == 20 and with_alarm:
                metrics["gold/restored_score"] = 0.49
            logger.log(step, metrics)
    if with_alarm:
        record_event(
            run_dir,
            {
                "step": 20,
                "kind": "over_optimization",
                "message": "proxy +0.4 while gold -0.25",
                "action": "restore_best",
                "restored_step": 10,
            },
        )
    return run_dir


@pytest.fixture(scope="module")
def hacked_report(tmp_path_factory) -> Path:
    return write_report(_synthetic_run(tmp_path_factory.mktemp("report") / "run"))


def test_report_embeds_one_png_per_logged_panel_and_summarises_the_run(hacked_report):
    page = hacked_report.read_text()
    assert page.count('src="data:image/png;base64,') == len(PANELS)  # every panel has a logged key here
    assert "Gold score: 0.250 at step 0, best 0.500 at step 10, last 0.000 at step 30." in page
    assert "Policy restored to the best-gold checkpoint of step 10." in page
    assert "<td>over_optimization</td><td>restore_best</td>" in page


def _entropy_only_run(run: Path) -> Path:
    with MetricsLogger(run, tensorboard=False) as logger:
        logger.log(1, {"train/entropy_mean": 0.5})
        logger.log(2, {"train/entropy_mean": 0.4})
    return run


def test_panels_without_logged_keys_are_left_out_and_a_quiet_run_says_so(tmp_path):
    page = write_report(_entropy_only_run(tmp_path / "run")).read_text()
    assert page.count("data:image/png;base64,") == 1
    assert "No alarm fired." in page and "Entropy per token: 0.5 at step 1 → 0.4 at step 2" in page


def test_the_reward_panel_of_a_run_without_gold_is_not_titled_proxy_vs_gold(tmp_path, hacked_report):
    with MetricsLogger(tmp_path / "run", tensorboard=False) as logger:
        for step in (1, 2):
            logger.log(step, {"reward/mean": 0.1 * step})
    page = write_report(tmp_path / "run").read_text()
    assert 'alt="Training reward (no gold reward configured' in page and "Proxy vs gold" not in page
    assert 'alt="Proxy vs gold (held-out)"' in hacked_report.read_text()  # a run with gold keeps the title


def test_summary_states_the_alarm_and_the_gold_of_the_restored_policy():
    records = [
        {"step": 0, "gold/score": 0.4, "proxy/score": 0.3},
        {"step": 10, "gold/score": 0.6},
        {"step": 20, "gold/score": 0.3, "proxy/score": 0.9, "gold/restored_score": 0.6},
    ]
    events = [{"step": 20, "kind": "over_optimization", "action": "restore_best", "restored_step": 10}]
    lines = summarize(records, events)
    assert "Gold score: 0.400 at step 0, best 0.600 at step 10, last 0.300 at step 20." in lines[1]
    assert "Gold score of the restored best-gold policy: 0.600." in lines
    assert "1 alarm(s); first: over_optimization at step 20 (action: restore_best)." in lines


def test_cli_report_writes_the_page_and_rejects_a_directory_without_metrics(tmp_path, capsys):
    run = _entropy_only_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert (run / REPORT_FILENAME).is_file() and str(run / REPORT_FILENAME) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err


def _images_loaded_in_chromium(page: Path) -> str:
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", _IMAGE_PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probed.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    found = re.search(r'data-images-loaded="([^"]*)"', dom)
    return found.group(1) if found else "no flag (the probe did not run)"


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install -y chromium")
def test_report_images_load_in_a_headless_browser(hacked_report):
    page = hacked_report
    assert _images_loaded_in_chromium(page) == str(len(PANELS))
    # The probe must be able to fail: a page whose image data is corrupt is reported broken.
    corrupt = page.with_name("corrupt.html")
    corrupt.write_text(page.read_text().replace("base64,iVBOR", "base64,XXXXX", 1))
    assert _images_loaded_in_chromium(corrupt) == "broken"


def test_captions_state_what_this_run_did_with_numbers(hacked_report):
    page = hacked_report.read_text()
    # 31 per-step values: the means of the first and last 3 (a tenth); reward 0.3 + 0.02·step → 0.32, 0.88.
    assert ("reward/mean rose from 0.32 to 0.88 (+175%) between step 0 and step 30 (means of the first and "
            "last 3 values)") in page
    # exp(−step/10): (1 + e^−0.1 + e^−0.2)/3 = 0.908, (e^−2.8 + e^−2.9 + e^−3)/3 = 0.0552.
    assert "train/entropy_mean fell from 0.908 to 0.0552 (-94%) between step 0 and step 30;" in page
    # 4 evaluations: end points, and the peak it fell from.
    assert "gold/score fell from 0.25 to 0 (-100%) between step 0 and step 30, after peaking at 0.5 at step 10" in page
    assert "eval/mean@4 fell from 25% to 0% (-25.0 points)" in page  # accuracies: percent, change in points
    assert "Training reward (reward/mean) rose from 0.32 to 0.88 (+175%)" in page  # the summary says it too
    for panel in PANELS:  # the generic reading guide is the tooltip, not the caption
        assert f"<figcaption>{html.escape(panel.look_for)}" not in page


def test_describe_change_says_when_a_series_did_not_move():
    records = [{"step": 1, "x": 2.0}, {"step": 5, "x": 2.0}]
    assert describe_change(records, "x") == "x stayed at 2 between step 1 and step 5"
    assert describe_change(records[:1], "x") == "x was 2 at step 1 (one point)"
    assert describe_change(records, "missing") is None


def test_report_shows_the_latest_training_samples_and_the_held_out_prompts_across_training(tmp_path):
    from grpokit.monitoring.samples import SamplesLog

    run = _entropy_only_run(tmp_path / "run")
    with SamplesLog(run) as log:
        for step in (1, 2):
            log.write([{"step": step, "kind": "train", "group": 0, "prompt_index": 3, "prompt": "2+2=",
                        "completion": f"answer-at-{step}", "rewards": {"exact_match": 0.0}, "total": 0.0,
                        "advantage": -0.5}])
        for step, completion in ((0, "5"), (2, "<4>")):
            log.write([{"step": step, "kind": "eval", "index": 0, "prompt": "1+3=", "completion": completion,
                        "rewards": {"exact_match": None, "gold/exact": 1.0}, "greedy": True}])
    page = write_report(run).read_text()
    assert "Training samples at step 2" in page and "answer-at-2" in page and "answer-at-1" not in page
    held_out = page[page.index("Held-out prompts across training"):]
    assert "eval row 0: <code>1+3=</code>" in held_out
    assert held_out.index("<td>0</td><td><code>5</code>") < held_out.index("<td>2</td><td><code>&lt;4&gt;</code>")
    assert "exact_match None, gold/exact 1</td>" in held_out  # every score named, None shown as None


def test_cli_report_skips_torn_last_lines_and_names_file_and_line_of_a_bad_middle_line(tmp_path, capsys):
    run = _synthetic_run(tmp_path / "run")
    metrics, alarms = run / "metrics.jsonl", run / "alarms.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 31, "reward/me')  # the disk filled mid-line
    alarms.write_text(alarms.read_text() + '{"step": 31, "ki')
    with pytest.warns(UserWarning, match="torn last line"):
        assert main(["report", str(run)]) == 0
    assert (run / REPORT_FILENAME).is_file()

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*lines[:3], "{not json", *lines[3:]]))
    assert main(["report", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"grpokit: log file error: {metrics}:4: not a JSON object") and "\n" not in error


def test_summary_says_when_every_held_out_prompt_gets_the_same_completion():
    samples = [{"step": 10, "kind": "eval", "index": i, "completion": "1"} for i in range(4)]
    samples += [{"step": 10, "kind": "train", "completion": c} for c in ("1", "12", "1", "3")]
    samples += [{"step": 0, "kind": "eval", "index": i, "completion": str(i)} for i in range(4)]  # older: ignored
    lines = summarize([], [], samples)
    assert "Latest training samples, step 10: 3 distinct completion(s) among 4." in lines
    assert ("Latest fixed held-out prompts (greedy), step 10: 1 distinct completion(s) among 4, all '1': "
            "the policy gives every prompt the same answer.") in lines
